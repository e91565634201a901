#!/usr/bin/env bash
# Installs the real third-party programs the end-to-end tests run against (Debian packages),
# where they are missing. Needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
for pair in nginx:nginx-light aria2c:aria2 curl:curl nm:binutils vsftpd:vsftpd openssl:openssl \
            transmission-cli:transmission-cli transmission-show:transmission-cli \
            transmission-daemon:transmission-daemon mktorrent:mktorrent; do
    prog="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
