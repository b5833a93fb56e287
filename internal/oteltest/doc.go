// Package oteltest tests redisservice's OpenTelemetry instrumentation with
// the OpenTelemetry SDK (a manual metric reader and a span recorder). It
// has no API. It is a module of its own so that the SDK enters only its
// go.mod, never the library's, which needs only the API modules.
package oteltest
