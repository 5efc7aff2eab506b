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
use futures_util::{Stream, StreamExt};
use ingress::extproc::{INGRESS_DIRECTION, direction, direction_unsupported};

use super::Wiring;
use crate::config::Loaded;

/// The messages of one stream, as a handler receives them (the first one included).
pub type Inbound =
    std::pin::Pin<Box<dyn Stream<Item = Result<ep::ProcessingRequest, tonic::Status>> + Send>>;
/// The answers of one stream, as a handler produces them.
pub type AnswerStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<ep::ProcessingResponse, tonic::Status>> + Send>>;
/// A direction's handler: answers one whole stream.
pub type Handler = Arc<dyn Fn(Inbound) -> AnswerStream + Send + Sync>;

/// How long a stream may stay open before its first message arrives (Envoy sends it at once).
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
        handler: impl Fn(Inbound) -> AnswerStream + Send + Sync + 'static,
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

    /// The answers to a stream whose first message is `first` and whose other messages are
    /// `rest`.
    fn dispatch(&self, first: ep::ProcessingRequest, rest: Inbound) -> AnswerStream {
        let name = direction(&first).unwrap_or(INGRESS_DIRECTION);
        match self.directions.handlers.get(name) {
            Some(handler) => {
                let first = futures_util::stream::once(std::future::ready(Ok(first)));
                handler(Box::pin(first.chain(rest)))
            }
            None => {
                tracing::debug!(
                    direction = name,
                    "ExtProc stream of a direction nobody handles"
                );
                let answer = (!first.observability_mode).then(|| Ok(direction_unsupported()));
                Box::pin(futures_util::stream::iter(answer))
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
        let mut inbound = request.into_inner();
        let this = self.clone();
        // The first message is read in the answer stream, so the response starts at once.
        let answers = futures_util::stream::once(async move {
            let first = tokio::time::timeout(FIRST_MESSAGE_DEADLINE, inbound.message()).await;
            let single = |r| -> AnswerStream { Box::pin(futures_util::stream::iter([r])) };
            match first {
                Ok(Ok(Some(first))) => this.dispatch(first, Box::pin(inbound)),
                Ok(Ok(None)) => Box::pin(futures_util::stream::empty()),
                Ok(Err(status)) => single(Err(status)),
                Err(_) => single(Err(tonic::Status::deadline_exceeded(format!(
                    "no message within {FIRST_MESSAGE_DEADLINE:?} of opening the stream"
                )))),
            }
        })
        .flatten();
        Ok(tonic::Response::new(Box::pin(answers)))
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
