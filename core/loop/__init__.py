"""The feedback loop's pure logic: retrain policy and gates, curation of feedback, drift."""
