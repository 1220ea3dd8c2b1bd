"""Producers: submit a planned run to the queue, report its status, cancel it, and fetch its results.

Planning a run and reading prompt sets live in the core (`tokenlens.plan`, `tokenlens.prompt_sets`),
since `tokenlens run` needs them too.
"""
