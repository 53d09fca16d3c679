"""Evaluation stage: what synthetic pairs are worth (Kossen et al. 2022).

unet (the half U-Net, Dice + cross-entropy, collapse restarts) · seg_metrics (DSC, HD95) ·
stitching (whole volumes from patches) · config (EvalConfig, grid) · inputs (run, cases,
training arrays) · selection (model selection on validation) · fid/ (standard Inception FID) ·
evaluate (select -> score test patients -> FID -> report) · report (report.json, REPORT.md,
number formatting) · sweep (utility against ε).
"""
