#!/usr/bin/env bash
# Base images for building and running the gateway on a Docker engine that cannot pull
# (no registry): everything comes from Debian's packages, this machine's Rust toolchain
# and the pinned nats-server binary. Images already present are kept; --rebuild makes
# them again. Prints nothing but progress; the images are:
#   cloudlysis-local/rust:bookworm     Debian bookworm + gcc + the Rust toolchain (build stage)
#   cloudlysis-local/cc:bookworm       glibc, libgcc, CA certificates, user nonroot (65532);
#                                      no shell, no package manager (runtime stage)
#   cloudlysis-local/nats:<version>    nats-server alone, on the cc base
set -euo pipefail
cd "$(dirname "$0")/../.."

RUST_IMAGE=cloudlysis-local/rust:bookworm
CC_IMAGE=cloudlysis-local/cc:bookworm
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

have() { [ "$rebuild" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

NATS_BIN="$(scripts/ensure-nats.sh)"
NATS_VERSION="$("$NATS_BIN" --version | sed -E 's/.*v([0-9.]+).*/\1/')"
NATS_IMAGE="cloudlysis-local/nats:${NATS_VERSION}"

if have "$RUST_IMAGE" && have "$CC_IMAGE" && have "$NATS_IMAGE"; then
  echo "bases: present ($RUST_IMAGE, $CC_IMAGE, $NATS_IMAGE)"
  exit 0
fi

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
work="$(mktemp -d /var/tmp/cloudlysis-bases.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mirror="$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"

echo "bases: debootstrap bookworm (minbase + gcc) from $mirror"
root="$work/root"
debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

if ! have "$RUST_IMAGE"; then
  sysroot="$(rustc --print sysroot)"
  echo "bases: $RUST_IMAGE with $(rustc --version)"
  mkdir -p "$root/usr/local/rust"
  # the toolchain without its documentation
  for part in bin lib libexec etc; do
    [ -e "$sysroot/$part" ] && cp -a "$sysroot/$part" "$root/usr/local/rust/"
  done
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'WORKDIR /src' \
    - "$RUST_IMAGE" >/dev/null
  rm -rf "$root/usr/local/rust"
fi

# the runtime base: what a dynamically linked Rust binary needs, nothing else
cc="$work/cc"
mkdir -p "$cc/etc/ssl/certs" "$cc/tmp" "$cc/home/nonroot" "$cc/lib64" "$cc/usr/lib"
chmod 1777 "$cc/tmp"
mkdir -p "$cc/usr/lib/x86_64-linux-gnu"
# the dynamic loader itself, where binaries look for it (in bookworm /lib64's entry is a
# symbolic link into /lib, which is /usr/lib)
cp -L "$root/lib64/ld-linux-x86-64.so.2" "$cc/lib64/"
for lib in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1; do
  cp -aL "$root/usr/lib/x86_64-linux-gnu/$lib" "$cc/usr/lib/x86_64-linux-gnu/"
done
ln -s usr/lib "$cc/lib"
cp -L "$root/etc/ssl/certs/ca-certificates.crt" "$cc/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$cc/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$cc/etc/group"
printf 'hosts: files dns\n' >"$cc/etc/nsswitch.conf"
chown 65532:65532 "$cc/home/nonroot"
if ! have "$CC_IMAGE"; then
  echo "bases: $CC_IMAGE"
  tar -C "$cc" -c . | docker import --change 'USER 65532:65532' - "$CC_IMAGE" >/dev/null
fi

if ! have "$NATS_IMAGE"; then
  echo "bases: $NATS_IMAGE"
  mkdir -p "$cc/usr/local/bin" "$cc/data"
  cp "$NATS_BIN" "$cc/usr/local/bin/nats-server"
  chown 65532:65532 "$cc/data"
  tar -C "$cc" -c . | docker import \
    --change 'USER 65532:65532' \
    --change 'ENTRYPOINT ["/usr/local/bin/nats-server"]' \
    --change 'EXPOSE 4222 6222 8222' \
    - "$NATS_IMAGE" >/dev/null
fi
echo "bases: done"
