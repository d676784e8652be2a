"""The memory plan of a run: bytes of every role, their gradients and AdamW state, and the activation peak.

``blocks`` (what autograd keeps per block, analytic), ``networks`` (a whole Wan transformer or AnimateDiff
UNet pass), ``passes`` (which networks run with a graph in each phase of a DistillationModule),
``role_bytes`` (weights per role of a built module), ``plan`` (the table, its JSON, the settings that fit),
``saved_tensors`` (the measurement the analytic model is checked against). ``python -m avdm.plan`` prints it;
every training run logs it (:class:`~avdm.training.callbacks.memory_plan.MemoryPlanLog`).
"""
