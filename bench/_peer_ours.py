"""Our side of `bench.peer`: `python -m bench._peer_ours URL DATA_DIR START END WORKERS PAIRS`.

`ktrdr_collect.api.collect(pairs, "1m", START, END, provider="binance", options={base_url: URL,
rate_limit: 0, source: api}, data_dir=DATA_DIR, workers=WORKERS, progress=False)`: the Python API's
whole path (plan, engine, provider, CSV store). Prints one JSON line: bars and requests.
"""

from __future__ import annotations

import json
import sys

if __name__ == "__main__":
    from ktrdr_collect.api import collect

    url, data_dir, start, end, workers, pairs = sys.argv[1:7]
    results = collect(pairs.split(","), "1m", int(start), int(end), provider="binance",
                      options={"base_url": url, "rate_limit": 0, "source": "api"}, data_dir=data_dir,
                      workers=int(workers), progress=False)
    bad = [f"{r.symbol}: {r.status} {r.error}" for r in results if not r.ok]
    print(json.dumps({"bars": sum(r.candles for r in results), "requests": sum(r.requests for r in results),
                      "failed": bad}))
