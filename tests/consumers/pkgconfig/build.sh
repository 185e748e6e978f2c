#!/bin/sh
# Build the consumer with pkg-config only: PKG_CONFIG_PATH names the installed prefix's
# lib/pkgconfig. Usage: build.sh OUTPUT
set -eu
here=$(dirname "$0")
libdir=$(pkg-config --variable=libdir layerbank)
# shellcheck disable=SC2046 # the flags are words
${CC:-cc} -std=c11 -Wall -Werror -o "$1" "$here/../consumer.c" $(pkg-config --cflags --libs layerbank) \
	-Wl,-rpath,"$libdir"
