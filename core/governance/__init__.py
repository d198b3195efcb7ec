"""Governance checks a candidate must pass besides getting facts right, Ray-free.

- :mod:`core.governance.hallucination`: confident fabrication on questions about made-up
  things and on checkable ones, offline; a cheap live signal from rated answers.
- :mod:`core.governance.bias`: counterfactual probes (the same prompt with a group term
  swapped), scored by the model's likelihoods and by its greedy answers.

The evaluation job (``jobs.evaluate``) reports both per model; the gate
(``core.loop.policy.gate``) compares the candidate's with its parent's.
"""
