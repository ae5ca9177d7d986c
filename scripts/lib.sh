# Shared by scripts/test and scripts/bench: where things live and how tools are installed.
# Everything goes to a cache directory outside the clone ($PROXYD_CACHE_DIR, default
# ~/.cache/proxyd-dev), so repeated runs only rebuild what changed.

export PROXYD_CACHE_DIR=${PROXYD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/proxyd-dev}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PROXYD_CACHE_DIR/target}
export PROXYD_TOOLS_DIR=${PROXYD_TOOLS_DIR:-$PROXYD_CACHE_DIR/tools}
tools=$PROXYD_TOOLS_DIR
mkdir -p "$tools"

# Pinned: s3s-fs 0.14.1 is the newest that builds with this toolchain and it validates SigV4;
# Azurite 3.35.0 validates SAS.
S3S_FS_VERSION=0.14.1
AZURITE_VERSION=3.35.0
CARGO_DENY_VERSION=0.20.2
CARGO_FUZZ_VERSION=0.13.1

step() { printf '\n==> %s\n' "$*"; }

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "scripts: '$1' is required but not on PATH ($2)" >&2
        exit 1
    }
}

install_s3s_fs() {
    if [ ! -x "$tools/s3s-fs/bin/s3s-fs" ]; then
        step "installing s3s-fs $S3S_FS_VERSION (S3 server that checks signatures)"
        cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$tools/s3s-fs"
    fi
}

install_azurite() {
    if [ ! -x "$tools/npm/node_modules/.bin/azurite-blob" ]; then
        step "installing Azurite $AZURITE_VERSION (Azure Blob emulator)"
        need npm "install Node.js 20 or newer with npm"
        mkdir -p "$tools/npm"
        (cd "$tools/npm" && { [ -f package.json ] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund "azurite@$AZURITE_VERSION")
    fi
}

# Wheels the pip tests serve from their local index: setuptools and wheel for building an
# sdist in isolation, and pip 22.0.4, the last pip that asks for PEP 503 HTML only.
install_pypi_wheels() {
    if [ ! -f "$tools/pypi-wheels/.complete" ]; then
        step "downloading setuptools, wheel and pip 22.0.4 wheels for the pip tests"
        need python3 "install Python 3 with pip"
        mkdir -p "$tools/pypi-wheels"
        env -u PIP_FIND_LINKS python3 -m pip download --disable-pip-version-check --no-deps \
            --only-binary :all: -d "$tools/pypi-wheels" 'setuptools<70' 'wheel<0.44' 'pip==22.0.4'
        touch "$tools/pypi-wheels/.complete"
    fi
}

install_cargo_deny() {
    if [ ! -x "$tools/cargo-deny/bin/cargo-deny" ]; then
        step "installing cargo-deny $CARGO_DENY_VERSION"
        cargo install "cargo-deny@$CARGO_DENY_VERSION" --locked --root "$tools/cargo-deny"
    fi
}

install_cargo_fuzz() {
    if [ ! -x "$tools/cargo-fuzz/bin/cargo-fuzz" ]; then
        step "installing cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked --root "$tools/cargo-fuzz"
    fi
}

# Genuine .deb files for the apt tests (fortune-mod with its dependency and recommendation,
# and hello), named as a pool names them (without the epoch).
install_test_debs() {
    if [ ! -f "$tools/debs/.complete" ]; then
        step "downloading the .deb files the apt tests serve"
        rm -rf "$tools/debs" && mkdir -p "$tools/debs"
        (cd "$tools/debs" && apt-get download -q fortune-mod librecode0 fortunes-min hello)
        for f in "$tools"/debs/*%3a*; do
            [ -e "$f" ] && mv "$f" "$(echo "$f" | sed 's/_[0-9]*%3a/_/')"
        done
        touch "$tools/debs/.complete"
    fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing ${missing[*]} from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# verdaccio 6 from npm; its audit plugin asks for a node-fetch dist-tag the registry may not
# expose, hence the override.
install_verdaccio() {
    if [ ! -x "$tools/verdaccio/node_modules/.bin/verdaccio" ]; then
        step "installing verdaccio (npm caching proxy, a benchmark peer)"
        mkdir -p "$tools/verdaccio"
        printf '%s\n' '{"name":"proxyd-bench-peers","version":"0.0.0","private":true,"overrides":{"verdaccio-audit":{"node-fetch":"2.7.0"}}}' \
            > "$tools/verdaccio/package.json"
        (cd "$tools/verdaccio" && npm install --no-audit --no-fund verdaccio@6)
    fi
}

install_devpi() {
    if [ ! -x "$tools/devpi/bin/devpi-server" ]; then
        step "installing devpi-server (PyPI caching proxy, a benchmark peer)"
        python3 -m venv "$tools/devpi"
        env -u PIP_FIND_LINKS "$tools/devpi/bin/pip" install -q devpi-server devpi-client
    fi
}

# Go: the test checksum database (our sumdbd, built offline in GOPATH mode against Debian's
# golang.org/x/mod) and genuine module sources: the upstream release tarballs Debian's source
# packages carry, fetched with a private deb-src list (the system's apt state is untouched).
GO_SOURCE_PACKAGES="golang-github-pkg-errors golang-github-google-uuid"
install_go_fixtures() {
    local src_sum
    src_sum=$(sha256sum crates/testkit/go/sumdbd/main.go | cut -d' ' -f1)
    if [ "$(cat "$tools/bin/sumdbd.sha256" 2>/dev/null)" != "$src_sum" ]; then
        step "building sumdbd (the tests' Go checksum database)"
        mkdir -p "$tools/bin"
        (cd crates/testkit/go/sumdbd && GO111MODULE=off GOPATH=/usr/share/gocode \
            GOCACHE="$tools/gocache" go build -o "$tools/bin/sumdbd" .)
        echo "$src_sum" > "$tools/bin/sumdbd.sha256"
    fi
    if [ ! -f "$tools/go-src/.complete" ]; then
        step "downloading genuine Go module sources ($GO_SOURCE_PACKAGES)"
        local dir="$tools/go-src" mirror
        rm -rf "$dir" && mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/x"
        mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
        [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" \
            > "$dir/sources.list"
        local opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root)
        apt-get "${opts[@]}" update -qq
        (cd "$dir" && apt-get "${opts[@]}" source --download-only -qq $GO_SOURCE_PACKAGES)
        for t in "$dir"/*.orig.tar.*; do tar xf "$t" -C "$dir/x"; done
        touch "$dir/.complete"
    fi
}
