"""ctrain: counterfactual training in JAX.

Modules are the paper's nouns: `data` (datasets with an actionability schema), `models`, `energy`,
`constraints`, `search` (batched counterfactual search), `objective` (the CT loss), `chains` (amortised CT's
counterfactual chains), `train` (`train_step`, `fit`, `fit_many`), `metrics`, `attacks`, `evaluate` (the paper's
protocol).
"""
__version__ = "0.1.0"
