"""Everything that predicts time: node profiles now; history, regression and transfer models later."""
