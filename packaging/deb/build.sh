#!/usr/bin/env bash
# Build cortexd_VERSION_ARCH.deb with dpkg-deb, the way dh-virtualenv would:
# the application in its own virtual environment under /opt/cortexd, built in
# a staging tree and then made to name /opt/cortexd wherever it named the
# staging path (script shebangs, pyvenv.cfg). No root needed: the archive's
# owner is root via --root-owner-group.
#
#   packaging/deb/build.sh OUT_DIR
#
# Environment:
#   DEB_VERSION     package version (default: cortexd.__version__)
#   DEB_PYTHON      the Debian interpreter the venv is made with (/usr/bin/python3.11);
#                   the package depends on its Debian package
#   DEB_MODEL       an already fetched copy of the default model to use when its
#                   SHA-256 matches (else scripts/fetch-model.sh downloads it)
#   DEB_COMPRESS, DEB_COMPRESS_LEVEL
#                   dpkg-deb compressor and level (gzip, 6: the model, half the
#                   package, does not compress, so xz saves 6 % for eight times
#                   the CPU; lintian on Debian 12 cannot read zstd)
#   DEB_MAINTAINER  the Maintainer field
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: build.sh OUT_DIR}
python=${DEB_PYTHON:-/usr/bin/python3.11}
compress=${DEB_COMPRESS:-gzip}
level=${DEB_COMPRESS_LEVEL:-6}
maintainer=${DEB_MAINTAINER:-cortexd maintainers <cortexd@lists.example.org>}
model_name=SmolLM2-135M-Instruct.Q4_1.gguf
prefix=/opt/cortexd

version=${DEB_VERSION:-$("$python" -c 'import ast,sys
tree = ast.parse(open(sys.argv[1]).read())
print(next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
           and n.targets[0].id == "__version__"))' "$repo/cortexd/__init__.py")}
arch=$(dpkg --print-architecture)
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.deb-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$prefix
site=$venv/lib/python$pyver/site-packages

note() { echo "deb: $*"; }

# -- the virtual environment ------------------------------------------------------
note "virtual environment with $python"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
pip=("$venv/bin/pip" --quiet --disable-pip-version-check --no-input)
# llama-cpp-python is published as source only; the wheel pip built for the
# development venv sits in pip's cache. Naming that file keeps pip from
# compiling llama.cpp again; without one, pip builds it (once: it is cached).
llama_version=$(sed -n 's/^llama-cpp-python==//p' "$repo/constraints.txt")
wheel=$("$venv/bin/pip" --disable-pip-version-check cache list --format=abspath "llama_cpp_python-$llama_version-*" 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then
    note "llama-cpp-python $llama_version from pip's cache: $wheel"
else
    note "llama-cpp-python $llama_version is not in pip's cache: pip compiles it (about ten minutes)"
fi
# The wheel of cortexd itself is built from a copy of its sources, so the
# checkout gains no build/ or egg-info and no stray file gets in.
mkdir "$work/src"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/cortexd" "$repo/cortexctl" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"${pip[@]}" wheel --no-deps --wheel-dir "$work/wheels" "$work/src" >/dev/null
# systemd-python is source-only too, but the wheel in pip's cache may come
# from another interpreter (pyenv's links its own lib/ into RUNPATH): build it
# afresh with the one the package runs on.
systemd_python=$(grep -i '^systemd-python==' "$repo/constraints.txt")
"${pip[@]}" install --no-compile --no-cache-dir --use-pep517 \
    -c "$repo/constraints.txt" "$systemd_python"
"${pip[@]}" install --no-compile -c "$repo/constraints.txt" \
    ${wheel:+"$wheel"} "$work/wheels"/cortexd-*.whl
# The default model, fetched and checked against its SHA-256 now, never at
# install or run time. A copy already on this machine is used when it is the
# same file: fetch-model.sh keeps a file in place only if its digest matches.
install -d "$root/var/lib/cortex/models"
model=$root/var/lib/cortex/models/$model_name
if [ -n "${DEB_MODEL:-}" ] && [ -f "$DEB_MODEL" ]; then
    note "model from $DEB_MODEL"
    cp "$DEB_MODEL" "$model"
    if ! "$repo/scripts/fetch-model.sh" "$model" "$venv/bin/pip" >/dev/null; then
        echo "deb: $DEB_MODEL is not the default model (its SHA-256 differs)" >&2
        exit 1
    fi
else
    "$repo/scripts/fetch-model.sh" "$model" "$venv/bin/pip" >/dev/null
fi

# What only building or installing needs: pip itself, setuptools, and the
# CMake/pkg-config files and headers llama.cpp's build installs beside its own
# copy of the libraries (llama_cpp loads llama_cpp/lib/*).
"${pip[@]}" uninstall -y pip setuptools
rm -rf "$site/lib" "$site/include" "$site"/cortexd-*.dist-info/direct_url.json
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
find "$venv" -name __pycache__ -prune -exec rm -rf {} +

# Make the venv name its installed place. Scripts start with the staging path.
for script in "$venv"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ] && head -c 2 "$script" | grep -q '#!'; then
        sed -i "1s|^#!$venv/|#!$prefix/|" "$script"
    fi
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
if grep -rIl --exclude-dir=__pycache__ "$work" "$venv" >/dev/null; then
    echo "deb: the staging path is still named in:" >&2
    grep -rIl --exclude-dir=__pycache__ "$work" "$venv" >&2
    exit 1
fi
# Debug sections are dead weight in a runtime package; libraries auditwheel
# patched (numpy.libs) are left as they are, since strip can break them.
find "$site" -name '*.so*' -type f -not -path '*/numpy.libs/*' -print0 |
    xargs -0 -r strip --strip-unneeded --remove-section=.comment --remove-section=.note
# Library modules are not scripts: a `#!` line on one that is not executable
# only misleads (lintian reads it as a script needing that interpreter). The
# line becomes a bare comment, so line numbers in tracebacks stay right.
find "$site" -name '*.py' -type f ! -perm -u+x -print0 |
    xargs -0 -r grep -lZ -m1 '^#!' |
    xargs -0 -r sed -i '1s|^#!.*$|#|'
# No byte-code in the package: postinst compiles it (the service's /opt is
# read-only, so it could never write its own) and prerm removes it.

# -- files around it ----------------------------------------------------------------
note "units, configuration, model, documentation"
install -d "$root/usr/bin"
ln -s "$prefix/bin/cortexd" "$root/usr/bin/cortexd"
ln -s "$prefix/bin/cortexctl" "$root/usr/bin/cortexctl"
install -d "$root/lib/systemd/system"
sed 's|^ExecStart=/usr/local/bin/cortexd$|ExecStart=/usr/bin/cortexd|' \
    "$repo/systemd/cortexd.service" >"$root/lib/systemd/system/cortexd.service"
grep -q '^ExecStart=/usr/bin/cortexd$' "$root/lib/systemd/system/cortexd.service"
install -m 0644 "$repo/systemd/cortexd.socket" "$root/lib/systemd/system/cortexd.socket"
chmod 0644 "$root/lib/systemd/system/cortexd.service"
install -d "$root/etc/cortex/plugins"
install -m 0644 "$repo/config/daemon.conf" "$root/etc/cortex/daemon.conf"
install -m 0644 "$repo/config/alerts.yaml" "$root/etc/cortex/alerts.yaml.example"


doc=$root/usr/share/doc/cortexd
install -d "$doc"
install -m 0644 "$here/copyright" "$doc/copyright"
{
    printf 'cortexd (%s) stable; urgency=medium\n\n' "$version"
    printf '  * Release %s.\n\n' "$version"
    printf ' -- %s  %s\n' "$maintainer" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n >"$doc/changelog.gz"
install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/cortexd"
install -d "$root/usr/share/man/man1" "$root/usr/share/man/man8"
gzip -9nc "$here/cortexctl.1" >"$root/usr/share/man/man1/cortexctl.1.gz"
gzip -9nc "$here/cortexd.8" >"$root/usr/share/man/man8/cortexd.8.gz"
# Shell completion, when this cortexctl has it.
if PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m cortexctl completion bash >"$work/completion" 2>/dev/null && [ -s "$work/completion" ]; then
    install -d "$root/usr/share/bash-completion/completions"
    install -m 0644 "$work/completion" "$root/usr/share/bash-completion/completions/cortexctl"
fi

find "$venv" -name __pycache__ -prune -exec rm -rf {} +

# -- control ------------------------------------------------------------------------
note "control files"
install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
printf '%s\n' /etc/cortex/daemon.conf /etc/cortex/alerts.yaml.example >"$root/DEBIAN/conffiles"

# Shared-library dependencies as dpkg-shlibdeps finds them. The libraries the
# venv carries itself (llama.cpp, numpy's) are searched in their own
# directories and need no package.
shlib=$work/shlibdeps
mkdir -p "$shlib/debian"
printf 'Source: cortexd\n\nPackage: cortexd\nArchitecture: any\n' >"$shlib/debian/control"
mapfile -d '' objects < <(find "$venv" -type f -name '*.so*' -print0)
privdirs=()
while IFS= read -r dir; do privdirs+=("-l$dir"); done < <(
    find "$venv" -type f -name '*.so*' -printf '%h\n' | sort -u)
shlibs=$(cd "$shlib" && dpkg-shlibdeps -O --ignore-missing-info "${privdirs[@]}" "${objects[@]}" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
# The interpreter's full package (python3.11), not only the one holding the
# binary: the venv uses its standard library (sqlite3, ssl, venv).
python_pkg=python$pyver
dpkg -s "$python_pkg" >/dev/null
# python3 too: numpy carries executable helper scripts that start with
# `#!/usr/bin/env python3`.
depends="$python_pkg, python3, passwd${shlibs:+, $shlibs}"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@DEPENDS@|$depends|" \
    -e "s|@SIZE@|$size|" -e "s|@MAINTAINER@|$maintainer|" \
    "$here/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# dpkg-deb keeps the modes it finds, and the builder's umask may be 077:
# everything is readable, what is executable by its owner by everyone.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -perm -u+x -exec chmod 0755 {} +
find "$root" -type f ! -perm -u+x -exec chmod 0644 {} +
find "$root" -type f -name '*.so*' -exec chmod 0644 {} +
deb=$out/cortexd_${version}_${arch}.deb
note "dpkg-deb ($compress -$level)"
dpkg-deb --root-owner-group -Z"$compress" -z"$level" --build "$root" "$deb" >/dev/null
echo "$deb"
