package main

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// newMetrics returns an OpenTelemetry meter provider for the Service
// (Options.MeterProvider) and the handler that serves what it measures
// at /metrics in the Prometheus text format, through the OpenTelemetry
// Prometheus exporter and a registry of its own.
func newMetrics() (mp *sdkmetric.MeterProvider, metrics http.Handler, err error) {
	reg := prometheus.NewRegistry()
	// One service, one scope: the otel_scope_* labels would only repeat
	// "github.com/vevurn/redisservice" on every line.
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, nil, err
	}
	mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

// withMetrics serves metrics at GET /metrics and everything else with h.
func withMetrics(h, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle("/", h)
	return mux
}

// shutdownMetrics flushes and stops mp.
func shutdownMetrics(mp *sdkmetric.MeterProvider) {
	_ = mp.Shutdown(context.Background())
}
