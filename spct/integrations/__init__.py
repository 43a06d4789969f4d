"""The GRM as the reward of other trainers: TRL's GRPOTrainer (`spct.integrations.trl`) and veRL
(`spct.integrations.verl`). OpenRLHF needs no code: it posts to the server's /openrlhf route
(docs/serving.md)."""
