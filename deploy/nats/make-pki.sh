#!/usr/bin/env bash
# Makes the TLS files of a NATS deployment with openssl: a CA (once), then a certificate
# signed by it for servers and clients (serverAuth and clientAuth, so the same kind serves
# client connections, routes between servers, and mutual TLS).
#
#   deploy/nats/make-pki.sh DIR NAME [HOST_OR_IP...]
#
# writes DIR/ca.pem and DIR/ca-key.pem (kept if present), DIR/NAME.pem and
# DIR/NAME-key.pem. The certificate names localhost and 127.0.0.1 besides the hosts given.
# Keys are P-256, mode 0600. The CA key signs every certificate: keep it off the servers.
# DAYS (default 825) sets the certificate's lifetime; the tests make an expired one with -1.
set -euo pipefail
dir="$1"; name="$2"; shift 2
command -v openssl >/dev/null || {
  echo "error: openssl not found; install it (Debian: apt-get install openssl)" >&2
  exit 1
}
mkdir -p "$dir"
cd "$dir"
umask 077
if [[ ! -f ca.pem ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
  # A name of its own, so that a certificate from another such CA is "unknown issuer".
  openssl req -x509 -new -key ca-key.pem -sha256 -days 3650 \
    -subj "/CN=skiff NATS CA $(openssl rand -hex 4)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null
fi
sans="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then sans+=",IP:$h"; else sans+=",DNS:$h"; fi
done
openssl ecparam -name prime256v1 -genkey -noout -out "$name-key.pem"
openssl req -new -key "$name-key.pem" -subj "/CN=$name" -out "$name.csr" 2>/dev/null
ext="$(mktemp)"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >"$ext"
openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "${DAYS:-825}" -sha256 \
  -extfile "$ext" -out "$name.pem" 2>/dev/null
rm -f "$ext" "$name.csr"
chmod 644 ca.pem "$name.pem"
