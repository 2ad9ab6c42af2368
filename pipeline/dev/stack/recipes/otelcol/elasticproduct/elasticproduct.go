// Package elasticproduct is an HTTP client "authenticator" extension that only marks
// responses as Elasticsearch's (X-Elastic-Product: Elasticsearch).
//
// Why: the contrib OpenSearch exporter is not served at the collector release the
// grayscope bench pins (v0.148.0, the one release where the GeoIP processor is served),
// so the bench uses the Elasticsearch exporter against OpenSearch. That exporter
// refuses any server whose first successful response lacks this header (its product
// check); OpenSearch speaks the same _bulk API but does not send it. Used as the
// exporter's `auth.authenticator`, this extension adds the header to each response
// and changes nothing else (no request is touched).
package elasticproduct

import (
	"context"
	"net/http"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/extension"
)

// Config has no settings.
type Config struct{}

var componentType = component.MustNewType("elasticproduct")

// NewFactory is the factory the collector builder registers.
func NewFactory() extension.Factory {
	return extension.NewFactory(
		componentType,
		func() component.Config { return &Config{} },
		func(context.Context, extension.Settings, component.Config) (extension.Extension, error) {
			return productMarker{}, nil
		},
		component.StabilityLevelDevelopment,
	)
}

type productMarker struct{}

func (productMarker) Start(context.Context, component.Host) error { return nil }

func (productMarker) Shutdown(context.Context) error { return nil }

// RoundTripper makes it an extensionauth.HTTPClient.
func (productMarker) RoundTripper(base http.RoundTripper) (http.RoundTripper, error) {
	return markingTransport{base: base}, nil
}

type markingTransport struct{ base http.RoundTripper }

func (t markingTransport) RoundTrip(request *http.Request) (*http.Response, error) {
	response, err := t.base.RoundTrip(request)
	if response != nil {
		response.Header.Set("X-Elastic-Product", "Elasticsearch")
	}
	return response, err
}
