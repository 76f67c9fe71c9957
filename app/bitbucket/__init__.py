"""The Bitbucket Cloud adapter: endpoint templates, pure protocol code, the HTTP client, OAuth."""
