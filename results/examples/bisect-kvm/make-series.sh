#!/bin/sh
# A local git series of the KVM sources of Debian's 6.12.117 for the bisect example:
# the base (good), six harmless commits and, fourth after the base, the regression
# (memslot deletes always zap all SPTEs: ../ab-patched-kvm/memslot-delete-zaps-all.patch).
# usage: make-series.sh SOURCE_TREE_OR_UNPACKED_KVM_PARTS DEST
set -eu
src=$1 dest=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$dest"
mkdir -p "$dest/arch/x86" "$dest/virt"
cp "$src/Makefile" "$dest/"
cp -r "$src/arch/x86/kvm" "$dest/arch/x86/"
cp -r "$src/virt/kvm" "$dest/virt/"
cd "$dest"
export GIT_AUTHOR_NAME=kvmharness GIT_AUTHOR_EMAIL=kvmharness@example.invalid
export GIT_COMMITTER_NAME=kvmharness GIT_COMMITTER_EMAIL=kvmharness@example.invalid
export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
git init -q -b main
git add -A
git commit -qm "Debian 6.12.117 KVM sources (Makefile, arch/x86/kvm, virt/kvm)"
note() {  # FILE TEXT: append a comment line, commit
    printf '/* %s */\n' "$2" >> "$1"
    git commit -qam "$3"
}
note arch/x86/kvm/x86.c "bisect series: a comment" "KVM: x86: a comment at the end of x86.c"
note virt/kvm/kvm_main.c "bisect series: a comment" "KVM: a comment at the end of kvm_main.c"
note arch/x86/kvm/svm/svm.c "bisect series: a comment" "KVM: SVM: a comment at the end of svm.c"
patch -s -p1 < "$here/../ab-patched-kvm/memslot-delete-zaps-all.patch"
git commit -qam "KVM: x86/mmu: zap all SPTEs on every memslot delete (the regression)"
note arch/x86/kvm/mmu/mmu.c "bisect series: a comment" "KVM: x86/mmu: a comment at the end of mmu.c"
note arch/x86/kvm/lapic.c "bisect series: a comment" "KVM: x86: a comment at the end of lapic.c"
note virt/kvm/kvm_main.c "bisect series: another comment" "KVM: another comment in kvm_main.c"
git log --oneline
