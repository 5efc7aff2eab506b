# Measuring helpers shared by bench/egress.sh and bench/agent.sh (sourced; ROUNDS must be set).
#
#   cpu_ticks PID     utime + stime of PID, in clock ticks (TICK per second)
#   rss_kib PID       resident memory of PID, KiB
#   field KEY         the value after KEY in "key value key value" output on stdin
#   add NAME VALUE    adds VALUE to the running sum NAME
#   mean NAME         the sum NAME divided by ROUNDS, 3 decimals
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
field() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}'; }
declare -A SUM
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN {print a + b}'); }
mean() { awk -v s="${SUM[$1]:-0}" -v n="$ROUNDS" 'BEGIN {printf "%.3f", s / n}'; }
