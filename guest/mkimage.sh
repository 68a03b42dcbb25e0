#!/bin/sh
# Builds one guest image: guest/<name>.S -> <name>.o -> <name>.bin (flat binary).
# Run by both builds (binding.gyp's guest_images rule, CMakeLists.txt's guest_images target), so
# they make byte-identical images.
#
#   sh guest/mkimage.sh <source.S> <object.o> <image.bin>
#
# The source is preprocessed and assembled by the C compiler (so #include "ucall.h" and
# #define work); -nostdinc keeps host headers out. The image is the object's .text section,
# raw: entry point at offset 0. The build fails if the object has
#   - relocations: the image must be position-independent (RIP-relative references to its own
#     labels resolve at assembly time; anything else would need a linker);
#   - allocated contents outside .text (.data, .bss, .rodata...): they would not be in the image
#     (put everything in .text: the host maps guest memory read-write).
# Tools: $GUEST_CC (default cc), $GUEST_OBJCOPY (objcopy), $GUEST_OBJDUMP (objdump); cc must
# target x86-64 (gcc or clang; the sources say .code64).
set -eu

if [ $# -ne 3 ]; then
  echo "usage: $0 <source.S> <object.o> <image.bin>" >&2
  exit 2
fi
src=$1
obj=$2
bin=$3
cc=${GUEST_CC:-cc}
objcopy=${GUEST_OBJCOPY:-objcopy}
objdump=${GUEST_OBJDUMP:-objdump}

mkdir -p "$(dirname "$obj")" "$(dirname "$bin")"
$cc -c -nostdinc -Wa,--fatal-warnings -I "$(dirname "$src")" -o "$obj" "$src"

# objdump -r prints "RELOCATION RECORDS FOR [section]:" per section that has any.
if $objdump -r "$obj" | grep -q 'RELOCATION RECORDS'; then
  echo "$src: the object has relocations; guest images must be position-independent" \
    "(reference own labels RIP-relative, no absolute addresses, no external symbols):" >&2
  $objdump -r "$obj" >&2
  exit 1
fi

# objdump -h: "Idx Name Size VMA LMA File-off Algn" then a flags line; reject any ALLOC section
# other than .text with a non-zero size.
$objdump -h "$obj" | awk -v src="$src" '
  /^ *[0-9]+ / { name = $2; size = $3; next }
  name != "" && /ALLOC/ && name != ".text" && size !~ /^0+$/ {
    printf "%s: section %s (0x%s bytes) would not be in the image; put everything in .text\n", src, name, size > "/dev/stderr"
    bad = 1
  }
  { name = "" }
  END { exit bad }'

$objcopy -O binary -j .text "$obj" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
