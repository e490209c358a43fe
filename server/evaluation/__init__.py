"""`keel eval`: labelled question sets run through the real run engine, scored, and reported."""
