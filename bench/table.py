"""The figures of benchmark runs as a Markdown table (for bench/README.md).

    .venv/bin/python bench/table.py bench/results/2026*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("DB", lambda r: r["db"]),
    ("N", lambda r: f"{r['n']:,}"),
    ("msg KB", lambda r: f"{r['message']['avg_bytes'] / 1000:.0f}"),
    ("wall s", lambda r: r["send"]["wall_s"]),
    ("msg/s at sink", lambda r: r["send"]["sink_rate"]),
    ("msg/s end to end", lambda r: r["send"]["end_to_end_rate"]),
    ("first msg s (from start / compile)", lambda r: f"{r['send']['first_message_s']} / "
                                                      f"{r['send'].get('first_message_after_compile_s')}"),
    ("peak RSS MB (PSS)", lambda r: f"{r['send']['peak_rss_mb']} ({r['send']['peak_pss_mb']}), "
                                    f"{r['send']['peak_processes']} proc"),
    ("CPU s /1000", lambda r: r["send"]["cpu_s_per_1000"]),
    ("all CPU / 2 cores s", lambda r: r["send"].get("cpu_bound_2core_s", "-")),
    ("DB server CPU s", lambda r: r["send"]["postgres_cpu_s"] if r["db"] == "postgresql" else "-"),
    ("smtp-source msg/s", lambda r: r["ceiling"].get("rate", "-")),
    ("naive msg/s", lambda r: r["naive"].get("rate", "-")),
    ("× ceiling", lambda r: r["targets"].get("ceiling_ratio", {}).get("value", "-")),
    ("× naive", lambda r: r["targets"].get("naive_speedup", {}).get("value", "-")),
    ("others' load (cores)", lambda r: r["send"].get("other_load_cores", "-")),
    ("git", lambda r: r["git"]["commit"] + ("+" if r["git"]["dirty"] else "")),
)


def main(paths: list[str]) -> None:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for result in rows:
        print("| " + " | ".join(str(get(result)) for _, get in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
