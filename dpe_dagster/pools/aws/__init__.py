"""AWS Auto Scaling groups as node pools, and the AWS emulator behind the aws-sim environment."""
