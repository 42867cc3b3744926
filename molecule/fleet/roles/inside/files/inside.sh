#!/bin/sh
# Runs inside a guest of the fleet scenario: records who and where it ran (checked from the host by testinfra).
set -e
{
  echo "uid=$(id -u)"
  echo "nodename=$(uname -n)"
  echo "pid1=$(cat /proc/1/comm)"
} > /etc/inside-ok
