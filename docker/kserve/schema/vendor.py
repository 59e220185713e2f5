"""Write the KServe CRD schemas that tests/unit/docker/test_kserve.py validates against.

    python docker/kserve/schema/vendor.py KSERVE_TAG COMMIT CRD.yaml [CRD.yaml ...]

Each CRD.yaml is a file of KServe's config/crd/full/ at that tag; the output keeps the served storage
version's openAPIV3Schema of each kind, as it is, keyed by apiVersion/kind, in kserve-<tag>.json here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def schemas(crd_files: list[Path]) -> dict[str, dict]:
    out = {}
    for path in crd_files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            (version,) = [v for v in spec["versions"] if v.get("served") and v.get("storage")]
            out[f"{spec['group']}/{version['name']}/{spec['names']['kind']}"] = version["schema"]["openAPIV3Schema"]
    return out


def main(argv: list[str]) -> int:
    tag, commit, *files = argv
    target = Path(__file__).resolve().parent / f"kserve-{tag}.json"
    document = {
        "kserve": tag,
        "commit": commit,
        "source": "kserve/kserve config/crd/full/",
        "licence": "Apache-2.0",
        "schemas": schemas([Path(f) for f in files]),
    }
    target.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {target} ({', '.join(document['schemas'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
