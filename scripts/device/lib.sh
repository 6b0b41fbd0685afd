# Shared by the device scripts: `run NAME DEADLINE COMMAND...` runs COMMAND under `timeout` until DEADLINE
# seconds after $T0, logs to $OUT_DIR/NAME.log and appends "NAME rc=... (limit, end)" to $OUT_DIR/times.txt.
run() {
  local name=$1 deadline=$2; shift 2
  local start=$SECONDS limit
  limit=$(( deadline - (SECONDS - T0) )); (( limit < 5 )) && limit=5
  timeout -k 15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start)) s (limit $limit s, ended at t=$((SECONDS - T0)) s)" | tee -a "$OUT_DIR/times.txt"
}
