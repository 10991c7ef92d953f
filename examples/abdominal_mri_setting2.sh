#!/usr/bin/env bash
# Abdominal MRI (CHAOS-T2), Setting 2: train and validate, 5 folds, 1-shot, paper protocol.
#   bash examples/abdominal_mri_setting2.sh                       # everything
#   FOLDS=0 STAGE=train bash examples/abdominal_mri_setting2.sh   # one fold, training only
#   VAL_EXTRA=protocol=realistic STAGE=validate bash examples/abdominal_mri_setting2.sh
source "$(dirname "$0")/lib.sh"
experiment chaost2 2 "0 1"
