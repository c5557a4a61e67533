#!/usr/bin/env bash
# Replication of a large repository while the application keeps writing.
#
#   usage: bench/replicate.sh [SIZE_MB=1024] [WRITE_SECS=10]
#
# Makes a WAL repository of SIZE_MB (rows of 4 KiB random blobs), adds a
# file peer, then measures, with a python3 writer inserting one row per
# transaction every 2 ms (synchronous=NORMAL, as WAL applications run):
#   1. the writer alone for WRITE_SECS: p50 / p99 / max latency of a write;
#   2. the writer during `backoffice peer sync` (the replicate task's copy,
#      default steps): the copy's MB/s, and the writer's p50 / p99 / max;
#   3. the replica's integrity_check and that it holds a prefix of the rows;
#   4. the wall time of `backoffice maintain --now` on the same repository.
# Prints key=value lines. Every loop is bounded in count and time.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
SIZE_MB=${1:-1024}
SECS=${2:-10}
build_release
make_workdir replicate
R="$W/app.db"
mkdir -p "$W/backup"
echo "size_mb=$SIZE_MB write_secs=$SECS disk=$(df -h "$W" | awk 'NR==2 {print $1}')"

python3 - "$R" "$SIZE_MB" <<'PY'
import os, sqlite3, sys, time
path, mb = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, at REAL)")
t0 = time.time()
rows = mb * 256  # 4 KiB each
for start in range(0, rows, 10000):
    with c:
        c.executemany("INSERT INTO t(v, at) VALUES (?, 0)",
                      ((os.urandom(4000),) for _ in range(min(10000, rows - start))))
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(f"made_rows={rows} make_s={time.time()-t0:.1f} file_mb={os.path.getsize(path)/2**20:.0f}")
PY
"$BO" peer add "$W/backup/app.db" -R "$R" > /dev/null || exit 1

cat > "$W/writer.py" <<'PY'
import os, sqlite3, sys, time
path, secs, out, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
c = sqlite3.connect(path, timeout=30, isolation_level=None)
c.execute("PRAGMA synchronous=NORMAL")
lat = []
end = time.time() + secs
n = 0
while time.time() < end and n < 300000 and not os.path.exists(stop):
    t = time.perf_counter()
    c.execute("INSERT INTO t(v, at) VALUES (zeroblob(100), ?)", (time.time(),))
    lat.append((time.perf_counter() - t) * 1000)
    n += 1
    time.sleep(0.002)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
open(out, "w").write(f"writes={len(lat)} p50_ms={q(0.5):.3f} p99_ms={q(0.99):.3f} max_ms={lat[-1]:.3f}\n")
PY

# 1. baseline
python3 "$W/writer.py" "$R" "$SECS" "$W/base.txt" "$W/no-stop"
echo "baseline $(cat "$W/base.txt")"

# 2. during a copy: the writer runs until the copy has ended (at most 10 min).
rm -f "$W/stop"
python3 "$W/writer.py" "$R" 600 "$W/during.txt" "$W/stop" &
wp=$!
sleep 1
t0=$(now_us)
"$BO" peer sync -R "$R" > "$W/sync.txt" 2>&1
ms=$(ms_since "$t0")
touch "$W/stop"
wait $wp
bytes=$(stat -c %s "$W/backup/app.db")
echo "copy $(cat "$W/sync.txt") wall_ms=$ms mb_per_s=$(awk -v b="$bytes" -v m="$ms" 'BEGIN{printf "%.1f", b/1048576/(m/1000)}')"
echo "during_copy $(cat "$W/during.txt")"
b99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' "$W/base.txt")
d99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' "$W/during.txt")
echo "p99_ratio=$(awk -v a="$d99" -v b="$b99" 'BEGIN{printf "%.2f", a/b}') target=2.0"

# 3. the replica
python3 - "$W/backup/app.db" "$R" <<'PY'
import sqlite3, sys
rep, src = sys.argv[1], sys.argv[2]
r = sqlite3.connect(f"file:{rep}?mode=ro", uri=True)
ok = r.execute("PRAGMA integrity_check").fetchone()[0]
n, mx = r.execute("SELECT count(*), max(id) FROM t").fetchone()
s = sqlite3.connect(src)
sn = s.execute("SELECT count(*) FROM t").fetchone()[0]
print(f"replica integrity={ok} rows={n} max_id={mx} prefix={'yes' if n == mx else 'NO'} source_rows_now={sn}")
PY

# 4. the cost of a maintenance run on the same repository (every step, now)
t0=$(now_us)
"$BO" maintain --now -R "$R" > "$W/maintain.txt" 2>&1
echo "maintain_now wall_ms=$(ms_since "$t0") exit=$?"
sed 's/^/maintain /' "$W/maintain.txt"
