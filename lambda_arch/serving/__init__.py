"""The serving layer: the SQLite store of merged view rows, its refresh from the lake, the answers
(ranking, shares, sessions) and the HTTP API over them."""
