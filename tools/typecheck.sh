#!/usr/bin/env bash
# mypy --strict over every package. The folders map to subpackages (pyproject's package-dir),
# which mypy cannot follow through an editable install, so this lays out the import tree as
# symlinks under build/typecheck and checks `tritonvision` there.
set -euo pipefail
cd "$(dirname "$0")/.."
MYPY="${MYPY:-.venv/bin/mypy}"
tree="${TYPECHECK_TREE:-build/typecheck}"
rm -rf "$tree"
mkdir -p "$tree/tritonvision"
root="$(pwd)"
for entry in tritonvision/*; do
  ln -s "$root/$entry" "$tree/tritonvision/$(basename "$entry")"
done
python3 - "$root" "$tree" <<'PY'
import sys, tomllib, os
root, tree = sys.argv[1], sys.argv[2]
cfg = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))
for package, folder in cfg["tool"]["setuptools"]["package-dir"].items():
    parts = package.split(".")
    if len(parts) != 2 or folder == package.replace(".", "/"):
        continue  # nested packages come along inside their parent's folder
    link = os.path.join(tree, *parts)
    if not os.path.lexists(link):
        os.symlink(os.path.join(root, folder), link)
PY
MYPYPATH="$tree" "$MYPY" --config-file pyproject.toml -p tritonvision "$@"
