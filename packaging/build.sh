#!/usr/bin/env bash
# `make deb` / `make rpm`: chainwatch packages from this checkout, with the distro's own tools (dpkg-deb,
# rpmbuild). Both are made from one staged tree:
#   /usr/bin/chainwatch                  launcher (system python3 -I, the bundled code first on sys.path)
#   /usr/lib/chainwatch/python/          the agent and its pure-Python dependencies (structlog, tomli), offline
#   /usr/share/chainwatch/{rules,bpf}    found by agent/resources.py
#   /etc/chainwatch/chainwatch.toml      conffile; /etc/logrotate.d/chainwatch
#   systemd unit, README
# Compiled dependencies come from the distro: bcc (python3-bpfcc / python3-bcc), psutil, msgpack, PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:?usage: build.sh deb|rpm}
out=$(realpath -m "${DIST:-dist}")
upstream=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
release=1
work=build/pkg/$kind
stage=$work/stage
rm -rf "$work"
mkdir -p "$stage" "$out"

copy_tree() {  # copy_tree SRC DEST: without byte-code or editor/test leftovers
    mkdir -p "$2"
    tar -C "$(dirname "$1")" --exclude=__pycache__ --exclude='*.pyc' -cf - "$(basename "$1")" | tar -C "$2" -xf -
}

lib=$stage/usr/lib/chainwatch/python
install -D -m 0755 packaging/bin/chainwatch "$stage/usr/bin/chainwatch"
copy_tree agent "$lib"
# The pure-Python dependencies, as wheels for the OLDEST Python the package installs on (python3 >= 3.9:
# RHEL 9's 3.9, Ubuntu 22.04's 3.10; newer ones run them too), with their licence files. One noarch package
# then serves every target: the interpreter-specific part (byte-code) is made by postinst/%post with the
# target's own python3. tomli is used only before 3.11 (agent/compat.py). `make test-py39` runs the tests
# with the same requirements on 3.9. The versions come from pyproject.toml (one home).
bundled=$(/usr/bin/python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    if re.match(r"(structlog|tomli)\b", dep):
        print(dep.split(";")[0].strip())
PY
)
# `pip download` honours the wheels' Requires-Python for --python-version (`pip install --target` does not).
wheels=$work/wheels
# shellcheck disable=SC2086  # one requirement per word
.venv/bin/pip download -q --disable-pip-version-check --no-deps -d "$wheels" \
    --only-binary=:all: --python-version 3.9 --implementation py --abi none --platform any $bundled
.venv/bin/pip install -q --disable-pip-version-check --no-compile --no-deps --no-index --target "$lib" "$wheels"/*.whl
rm -rf "$lib"/bin
rm -f "$lib"/*.dist-info/direct_url.json "$lib"/*.dist-info/INSTALLER "$lib"/*.dist-info/REQUESTED
copy_tree rules "$stage/usr/share/chainwatch"
copy_tree bpf "$stage/usr/share/chainwatch"
install -D -m 0644 packaging/chainwatch.toml "$stage/etc/chainwatch/chainwatch.toml"
install -D -m 0644 packaging/logrotate/chainwatch "$stage/etc/logrotate.d/chainwatch"
install -D -m 0644 README.md "$stage/usr/share/doc/chainwatch/README.md"
mkdir -p "$stage/usr/share/man/man8"
gzip -9n < packaging/man/chainwatch.8 > "$stage/usr/share/man/man8/chainwatch.8.gz"
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f ! -perm -u+x -exec chmod 0644 {} +

case "$kind" in
deb)
    version=$upstream-$release
    install -D -m 0644 packaging/systemd/chainwatch.service "$stage/lib/systemd/system/chainwatch.service"
    install -m 0644 packaging/debian/copyright "$stage/usr/share/doc/chainwatch/copyright"
    sed -e "s/@VERSION@/$version/g" -e "s/@UPSTREAM@/$upstream/g" packaging/debian/changelog \
        | gzip -9n > "$stage/usr/share/doc/chainwatch/changelog.Debian.gz"
    chmod 0644 "$stage/usr/share/doc/chainwatch/changelog.Debian.gz"
    install -D -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/chainwatch"
    mkdir -p "$stage/DEBIAN"
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" packaging/debian/control.in > "$stage/DEBIAN/control"
    printf '%s\n' /etc/chainwatch/chainwatch.toml /etc/logrotate.d/chainwatch > "$stage/DEBIAN/conffiles"
    for script in postinst prerm postrm; do
        install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
    done
    (cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
        | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
    chmod 0644 "$stage/DEBIAN/"{control,conffiles,md5sums}
    deb=$out/chainwatch_${version}_all.deb
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "$deb"
    ;;
rpm)
    install -D -m 0644 packaging/systemd/chainwatch.service "$stage/usr/lib/systemd/system/chainwatch.service"
    sed -e "s/@UPSTREAM@/$upstream/g" packaging/rpm/chainwatch.spec.in > "$work/chainwatch.spec"
    rpmbuild -bb --quiet \
        --define "_topdir $PWD/$work/rpmbuild" \
        --define "_rpmdir $out" \
        --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
        --define "stage $PWD/$stage" \
        "$work/chainwatch.spec" >/dev/null
    echo "$out/chainwatch-$upstream-$release.noarch.rpm"
    ;;
*)
    echo "build.sh: unknown package kind $kind (deb or rpm)" >&2; exit 2 ;;
esac
