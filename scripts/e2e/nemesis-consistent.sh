#!/usr/bin/env bash
# The replication nemesis suite (nemesis.sh) on a bucket in consistent mode: the checker also
# asserts read-after-write and that no acknowledged write is ever undone.
NEMESIS_NAME=nemesis-consistent NEMESIS_MODE=consistent exec bash "$(dirname "$0")/nemesis.sh"
