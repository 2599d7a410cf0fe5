"""The paper's published numbers (Table 1, Table 3 and Fig. 4), to print beside reproduced ones.

Source: shared/reference/paper-details.md §3–4 (SaTML camera-ready). Reductions are CT vs BL in %
(positive = CT better), "*" = the paper's 99% CI excludes 0. Accuracies for the real datasets are
read off Fig. 4 (±0.03); for the synthetic ones from the grid-search tables (App. Tables 9–11).
German credit and 8×8 digits are not in the paper.
"""

# dataset: (IP −%, significant), (IP* −%, significant), (cost with protected feature −%, significant)
TABLE1 = {
    "linearly_separable": ((26.26, True), (51.28, True), (16.41, True)),
    "circles": ((58.88, True), (93.84, True), (42.99, True)),
    "moons": ((19.59, True), (8.00, False), (5.16, True)),
    "overlapping": ((-1.93, False), (-27.70, False), (40.86, True)),
    "adult": ((0.19, False), (34.35, True), (4.03, False)),
    "california_housing": ((10.65, True), (63.06, True), (44.23, True)),
    "credit_default": ((10.14, True), (50.35, True), (-18.17, True)),
    "gmsc": ((10.65, True), (24.75, True), (66.01, True)),
    "mnist": ((6.36, True), (-70.31, False), (-35.11, True)),
}

# dataset: (validity CT, validity BL), unconstrained (Table 3)
VALIDITY = {
    "linearly_separable": (1.0, 1.0), "circles": (1.0, 0.51), "moons": (1.0, 1.0), "overlapping": (0.86, 0.98),
    "adult": (0.68, 0.99), "california_housing": (1.0, 1.0), "credit_default": (0.72, 1.0), "gmsc": (0.94, 1.0),
    "mnist": (1.0, 1.0),
}

# dataset: (test accuracy CT, test accuracy BL)
ACCURACY = {
    "linearly_separable": (1.0, 1.0), "circles": (1.0, 1.0), "moons": (1.0, 1.0), "overlapping": (0.91, 0.92),
    "adult": (0.86, 0.86), "california_housing": (0.81, 0.85), "credit_default": (0.71, 0.71), "gmsc": (0.65, 0.75),
    "mnist": (0.90, 0.92),
}


def reduction(dataset: str, column: int) -> str:
    """Returns the paper's Table 1 cell ("26.26*") for column 0 (IP), 1 (IP*) or 2 (cost), or "–"."""
    if dataset not in TABLE1:
        return "–"
    value, significant = TABLE1[dataset][column]
    return f"{value:.2f}{'*' if significant else ''}"
