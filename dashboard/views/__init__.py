"""URL ⇄ view state, one module per page: each reads a page's query into the view it shows
(defaults where a value is missing or not offered) and writes a view back as a query string."""
