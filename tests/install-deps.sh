#!/usr/bin/env bash
# Installs the real third-party programs the end-to-end tests run against (Debian packages),
# where they are missing. Needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
for pair in nginx:nginx-light aria2c:aria2 curl:curl nm:binutils vsftpd:vsftpd openssl:openssl \
            transmission-cli:transmission-cli transmission-show:transmission-cli \
            transmission-daemon:transmission-daemon mktorrent:mktorrent \
            chromium:chromium node:nodejs npm:npm microsocks:microsocks danted:dante-server \
            opentracker:opentracker; do
    prog="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || need+=("$pkg")
done
# pure-ftpd (FTP logins with a user and password, tests/tests/ftp.rs) conflicts with vsftpd as a
# Debian package (both provide ftp-server), so its package is unpacked under target/test-tools
# rather than installed: no service of it is set up or started. Its one library vsftpd does not
# already pull in is libsodium.
tools="$(cd "$(dirname "$0")/.." && pwd)/target/test-tools"
pure_ftpd=1
{ command -v pure-ftpd || [ -x /usr/sbin/pure-ftpd ]; } >/dev/null 2>&1 && command -v pure-pw >/dev/null 2>&1 && pure_ftpd=0
[ -x "$tools/pure-ftpd/usr/sbin/pure-ftpd" ] && [ -x "$tools/pure-ftpd/usr/bin/pure-pw" ] && pure_ftpd=0
if [ "$pure_ftpd" -eq 1 ]; then
    ldconfig -p 2>/dev/null | grep -q 'libsodium\.so\.23' || need+=(libsodium23)
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=0
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    $sudo apt-get update -qq
    updated=1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$pure_ftpd" -eq 1 ]; then
    echo "unpacking pure-ftpd into $tools/pure-ftpd" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    fetch() { (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" pure-ftpd); }
    fetch || { [ "$updated" -eq 0 ] && $sudo apt-get update -qq && fetch; }
    rm -rf "$tools/pure-ftpd"
    mkdir -p "$tools"
    dpkg-deb -x "$tmp"/pure-ftpd_*.deb "$tools/pure-ftpd"
    if ldd "$tools/pure-ftpd/usr/sbin/pure-ftpd" "$tools/pure-ftpd/usr/bin/pure-pw" | grep 'not found' >&2; then
        echo "pure-ftpd is missing the libraries above: install them with apt-get" >&2
        exit 1
    fi
fi
# playwright-core (drives Chromium in tests/tests/daemon.rs's page test) from npm, under
# target/test-tools/pw: the browser itself is Debian's chromium, nothing is downloaded by it.
pw="$tools/pw"
if [ ! -f "$pw/node_modules/playwright-core/package.json" ]; then
    echo "installing playwright-core into $pw" >&2
    mkdir -p "$pw"
    npm install --prefix "$pw" --no-audit --no-fund --loglevel=error playwright-core@1 >&2
fi
# anvil (a local Ethereum dev chain: tests/tests/payments.rs) from npm, the package that ships
# its binary, under target/test-tools/anvil.
anvil_version=1.7.1
anvil="$tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
if ! "$anvil" --version 2>/dev/null | grep -q "Version: $anvil_version"; then
    echo "installing anvil $anvil_version into $tools/anvil" >&2
    mkdir -p "$tools/anvil"
    npm install --prefix "$tools/anvil" --no-audit --no-fund --loglevel=error "@foundry-rs/anvil-linux-amd64@$anvil_version" >&2
fi
