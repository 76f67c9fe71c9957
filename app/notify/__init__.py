"""Drift alerts: which changes deserve one (rules, pure), how they read (render, pure), the durable
outbox with grouping and digests (dispatcher), and delivery to Slack and email with retries."""
