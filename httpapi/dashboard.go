package httpapi

import (
	"embed"
	"io/fs"
	"net/http"
)

// dashboardFiles is the dashboard: one page, a script and a style sheet,
// embedded (no CDN, no build step). The page holds no data; it reads the
// API with the API key the user signs in with, kept in the tab's session
// storage.
//
//go:embed dashboard/index.html dashboard/app.js dashboard/app.css
var dashboardFiles embed.FS

// dashboardHandler serves GET /dashboard (the page) and /dashboard/* (its
// files).
func dashboardHandler() http.Handler {
	sub, _ := fs.Sub(dashboardFiles, "dashboard") // the directory is embedded above
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The page talks only to this server.
		w.Header().Set("Content-Security-Policy", "default-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.URL.Path == "/dashboard" || r.URL.Path == "/dashboard/" {
			http.ServeFileFS(w, r, sub, "index.html")
			return
		}
		http.StripPrefix("/dashboard/", files).ServeHTTP(w, r)
	})
}
