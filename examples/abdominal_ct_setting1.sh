#!/usr/bin/env bash
# Abdominal CT (Synapse/SABS), Setting 1: train and validate, 5 folds, 1-shot, paper protocol.
#   bash examples/abdominal_ct_setting1.sh                       # everything
#   FOLDS=0 STAGE=train bash examples/abdominal_ct_setting1.sh   # one fold, training only
#   VAL_EXTRA=protocol=realistic STAGE=validate bash examples/abdominal_ct_setting1.sh
source "$(dirname "$0")/lib.sh"
experiment sabs 1 "0 1"
