package agentopts

import (
	"reflect"
	"testing"
	"time"
)

func TestWithDefaults(t *testing.T) {
	if d := Defaults(); !reflect.DeepEqual(d.WithDefaults(), d) {
		t.Errorf("Defaults().WithDefaults() changed the defaults: %+v", d.WithDefaults())
	}
	// Zero paths and durations are filled; booleans and the Kubernetes
	// settings stay as given.
	got := Options{SubnetFile: "/tmp/s.env", ResyncPeriod: time.Second}.WithDefaults()
	want := Options{
		EtcdPrefix: DefaultEtcdPrefix, SubnetFile: "/tmp/s.env",
		RenewMargin: DefaultRenewMargin, ResyncPeriod: time.Second,
		IPTablesResync: DefaultIPTablesResync, ConfigRetry: DefaultConfigRetry,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}
