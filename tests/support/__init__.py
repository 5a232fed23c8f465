"""What several test modules share: fixtures and helpers (fakes of outside services are in
tests/fakes/)."""
