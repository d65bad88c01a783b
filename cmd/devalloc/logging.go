package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// logFlags are --log-level and --log-format, shared by the subcommands that
// log.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flagSet) {
	fs.stringVar(&l.level, "log-level", "DEVALLOC_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	fs.stringVar(&l.format, "log-format", "DEVALLOC_LOG_FORMAT", "text", "log format: text or json")
}

// logger builds the slog logger the flags describe; logs go to w (stderr),
// leaving stdout to what a command prints on purpose.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usageError{error: fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(l.format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageError{error: fmt.Errorf("--log-format %q: want text or json", l.format)}
	}
}
