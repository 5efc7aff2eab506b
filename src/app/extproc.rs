//! The Envoy ExtProc service (`envoy.service.ext_proc.v3.ExternalProcessor`): one service for
//! every direction. A dispatcher reads the first message of each stream, takes its direction
//! from the `direction` value in the `actorgate` filter metadata (`ingress` when absent), and
//! hands the whole stream to that direction's handler. Components add their handler to
//! [`Directions`] (the ingress component adds `ingress`; the egress PEP will add `egress`). A
//! direction nobody handles is answered as before the egress PEP existed: 501 `egress mode is
//! not available` (nothing in observability mode), and the stream ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use ingress::extproc::{
    AnswerStream, INGRESS_DIRECTION, Inbound, by_first_message, direction, put_back, unsupported,
};
use tokio::time::Instant;

use super::Wiring;
use crate::config::Loaded;

/// A direction's handler: answers one whole stream (its first message put back in front), given
/// when the stream opened, so its deadlines count from then.
pub type Handler = Arc<dyn Fn(Inbound, Instant) -> AnswerStream + Send + Sync>;

/// How long a stream may stay open before its first message arrives (Envoy sends it at once).
/// Counted from the stream's opening, as the handlers' own deadlines are: a stream that never
/// sends `request_headers` is ended 30 s after it opened, not 30 s more after its first message.
const FIRST_MESSAGE_DEADLINE: Duration = Duration::from_secs(30);

/// The direction handlers, by direction name.
#[derive(Default, Clone)]
pub struct Directions {
    handlers: HashMap<String, Handler>,
}

impl Directions {
    /// Hands the streams of `direction` to `handler`.
    pub fn add(
        &mut self,
        direction: &str,
        handler: impl Fn(Inbound, Instant) -> AnswerStream + Send + Sync + 'static,
    ) {
        self.handlers
            .insert(direction.to_owned(), Arc::new(handler));
    }

    /// Whether no direction has a handler.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// The ExtProc service: dispatches each stream to its direction's handler.
#[derive(Clone)]
pub struct Dispatcher {
    directions: Arc<Directions>,
}

impl Dispatcher {
    /// A dispatcher over `directions`.
    pub fn new(directions: Directions) -> Self {
        Self {
            directions: Arc::new(directions),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> ep::external_processor_server::ExternalProcessorServer<Self> {
        ep::external_processor_server::ExternalProcessorServer::new(self)
    }

    /// The answers to a stream opened at `opened` whose first message is `first` and whose
    /// other messages are `rest`: the direction is read here, once per stream.
    fn dispatch(
        &self,
        first: ep::ProcessingRequest,
        rest: Inbound,
        opened: Instant,
    ) -> AnswerStream {
        let name = direction(&first).unwrap_or(INGRESS_DIRECTION);
        match self.directions.handlers.get(name) {
            Some(handler) => handler(put_back(first, rest), opened),
            None => {
                tracing::debug!(
                    direction = name,
                    "ExtProc stream of a direction nobody handles"
                );
                unsupported(&first)
            }
        }
    }
}

#[tonic::async_trait]
impl ep::external_processor_server::ExternalProcessor for Dispatcher {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ep::ProcessingRequest>>,
    ) -> Result<tonic::Response<AnswerStream>, tonic::Status> {
        let opened = Instant::now();
        let this = self.clone();
        Ok(tonic::Response::new(by_first_message(
            Box::pin(request.into_inner()),
            opened,
            FIRST_MESSAGE_DEADLINE,
            move |first, rest| this.dispatch(first, rest, opened),
        )))
    }
}

/// With `grpc.extproc` on, serves the dispatcher over the direction handlers the components
/// added.
pub fn start(w: &mut Wiring, loaded: &Loaded) {
    let directions = std::mem::take(&mut w.extproc);
    if loaded.config.grpc.extproc && !directions.is_empty() {
        w.grpc.add(Dispatcher::new(directions).into_server());
    }
}
