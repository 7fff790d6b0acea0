#!/usr/bin/env bash
# Fetch Debian's OpenSSH server (sshd, sftp-server) and libnss-wrapper and unpack them under
# <repo>/.cache/sshd/ (dpkg -x only: nothing is installed system-wide, no service is started, no user
# is created). The tests run this sshd on 127.0.0.1 (tests/restore/sshd.py).
#
# Shared libraries sshd links that this machine lacks (libwrap0 on a stock bookworm) are fetched and
# unpacked beside it: every `lib*` package in the Depends of these packages, recursively, that dpkg
# does not list as installed. Run the binaries with LD_LIBRARY_PATH=<dir>/usr/lib/<triplet>:<dir>/lib/<triplet>.
#
# Idempotent: when everything is already unpacked, nothing is downloaded.
# On success the only line on stdout is the directory the packages were unpacked into (usr/sbin/sshd,
# usr/lib/openssh/sftp-server and usr/lib/<triplet>/libnss_wrapper.so are under it).
# `apt-get update` is run only when the package lists do not know the packages or a download fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${SSHD_DIR:-$repo/.cache/sshd}"
packages=(openssh-server openssh-sftp-server libnss-wrapper)

complete() {
    [[ -x "$1/usr/sbin/sshd" && -x "$1/usr/lib/openssh/sftp-server" ]] \
        && compgen -G "$1/usr/lib/*/libnss_wrapper.so" >/dev/null
}

if complete "$dest"; then
    echo "$dest"
    exit 0
fi

command -v apt-get >/dev/null || { echo "fetch-sshd: apt-get not found" >&2; exit 1; }
command -v dpkg >/dev/null || { echo "fetch-sshd: dpkg not found" >&2; exit 1; }

if ! apt-cache show "${packages[@]}" >/dev/null 2>&1; then
    echo "fetch-sshd: the package lists do not know ${packages[*]}; running apt-get update" >&2
    apt-get update >&2
fi

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# The lib* packages (shared libraries) these packages depend on, recursively, that are not installed.
missing_libs() {
    local -A seen=()
    local queue=("$@") pkg dep
    while ((${#queue[@]})); do
        pkg="${queue[0]}"
        queue=("${queue[@]:1}")
        while read -r dep; do
            [[ "$dep" == lib* && -z "${seen[$dep]:-}" ]] || continue
            seen[$dep]=1
            if ! installed "$dep"; then
                echo "$dep"
                queue+=("$dep")
            fi
        done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
                     --no-enhances "$pkg" | sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^<>[:space:]]*\)$/\2/p')
    done
}

mapfile -t extra < <(missing_libs "${packages[@]}")
((${#extra[@]})) && echo "fetch-sshd: also fetching missing shared libraries: ${extra[*]}" >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # lets apt-get download sandboxed as _apt
cd "$work"

download() {
    apt-get download "${packages[@]}" "${extra[@]}" >&2
}

if ! download; then
    echo "fetch-sshd: download failed; running apt-get update and retrying" >&2
    apt-get update >&2
    download
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
for deb in ./*.deb; do
    dpkg -x "$deb" "$dest.tmp"
done
if ! complete "$dest.tmp"; then
    echo "fetch-sshd: the packages did not contain sshd, sftp-server and libnss_wrapper.so" >&2
    rm -rf "$dest.tmp"
    exit 1
fi

# Every library the binaries link must now resolve (from the system or from what was unpacked).
libpath="$(find "$dest.tmp" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd: -)"
for bin in "$dest.tmp/usr/sbin/sshd" "$dest.tmp/usr/lib/openssh/sftp-server" "$dest.tmp"/usr/lib/*/libnss_wrapper.so; do
    if LD_LIBRARY_PATH="$libpath" ldd "$bin" | grep -q 'not found'; then
        echo "fetch-sshd: $bin still misses libraries:" >&2
        LD_LIBRARY_PATH="$libpath" ldd "$bin" | grep 'not found' >&2
        rm -rf "$dest.tmp"
        exit 1
    fi
done

rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
