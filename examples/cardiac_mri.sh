#!/usr/bin/env bash
# Cardiac MRI (MS-CMRSeg bSSFP), Setting 1: train and validate, 5 folds, 1-shot, paper protocol.
#   bash examples/cardiac_mri.sh                       # everything
#   FOLDS=0 STAGE=train bash examples/cardiac_mri.sh   # one fold, training only
#   VAL_EXTRA=protocol=realistic STAGE=validate bash examples/cardiac_mri.sh
source "$(dirname "$0")/lib.sh"
experiment cmr 1 "0 1 2"
