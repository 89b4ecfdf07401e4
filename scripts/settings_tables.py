"""Write the settings tables of the docs from the dataclasses that check those settings.

Each table sits between ``<!-- settings:NAME -->`` and ``<!-- /settings:NAME -->`` in a markdown
file; this script rewrites what is between them. ``--check`` writes nothing and exits 1 when a
table differs from what the code says (tests/test_architecture.py runs it).

    python scripts/settings_tables.py            # rewrite README.md and docs/*.md
    python scripts/settings_tables.py --check    # exit 1 if any table is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tables() -> dict[str, str]:
    from pyrotrain.config import EarlyStopping, TrainerConfig
    from pyrotrain.distributed.horovod import Settings as HorovodSettings
    from pyrotrain.distributed.torch import Settings as TorchSettings
    from pyrotrain.schema import settings_table

    return {
        "trainer": settings_table(TrainerConfig),
        "early_stopping": settings_table(EarlyStopping),
        "distributed": settings_table(HorovodSettings),
        "distributed_torch": settings_table(TorchSettings),
    }


def rewrite(text: str, generated: dict[str, str]) -> str:
    for name, table in generated.items():
        pattern = re.compile(
            rf"(<!-- settings:{name} -->\n).*?(<!-- /settings:{name} -->)", re.DOTALL
        )
        text = pattern.sub(lambda m, t=table: f"{m.group(1)}{t}\n{m.group(2)}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale tables; write nothing")
    args = parser.parse_args(argv)
    generated = tables()
    stale = []
    found = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        found |= {n for n in generated if f"<!-- settings:{n} -->" in text}
        new = rewrite(text, generated)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    missing = sorted(set(generated) - found)
    if missing:
        print(f"no <!-- settings:NAME --> markers for: {', '.join(missing)}", file=sys.stderr)
        return 1
    if stale and args.check:
        print(
            f"stale settings tables in: {', '.join(map(str, stale))}; run "
            "python scripts/settings_tables.py",
            file=sys.stderr,
        )
        return 1
    for path in stale:
        print(f"rewrote the settings tables in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
