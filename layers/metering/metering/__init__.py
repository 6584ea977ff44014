"""metering: usage metering and entitlements. Kept empty so importing a submodule stays cheap."""
