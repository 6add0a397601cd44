package lab

import (
	"math"
	"testing"
)

func TestCompareFamilyRatios(t *testing.T) {
	tests := []struct {
		name                     string
		bare4, pod4, bare6, pod6 float64
		r4, r6                   float64
		meets                    bool
	}{
		{"equal ratios", 20e9, 10e9, 16e9, 8e9, 0.5, 0.5, true},
		{"IPv6 better", 20e9, 10e9, 16e9, 12e9, 0.5, 0.75, true},
		{"just within 5 %", 20e9, 10e9, 10e9, 4.76e9, 0.5, 0.476, true},
		{"just below 5 %", 20e9, 10e9, 10e9, 4.74e9, 0.5, 0.474, false},
		// 8 % under: within 5 ratio points (0.45), not within 5 % of 0.5.
		{"relative, not points", 20e9, 10e9, 10e9, 4.6e9, 0.5, 0.46, false},
		// Faster IPv6 throughput does not meet it if its bare run is faster still.
		{"ratio, not throughput", 10e9, 9e9, 40e9, 12e9, 0.9, 0.3, false},
		{"IPv6 pods moved nothing", 20e9, 10e9, 10e9, 0, 0.5, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := compareFamilyRatios(tt.bare4, tt.pod4, tt.bare6, tt.pod6)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(got.R4-tt.r4) > 1e-9 || math.Abs(got.R6-tt.r6) > 1e-9 || got.Meets != tt.meets {
				t.Errorf("got %+v, want r4 %v r6 %v meets %v", got, tt.r4, tt.r6, tt.meets)
			}
			if want := tt.r4 * 0.95; math.Abs(got.Floor-want) > 1e-9 {
				t.Errorf("floor %v, want %v", got.Floor, want)
			}
		})
	}
	for _, bad := range [][4]float64{{0, 1e9, 1e9, 1e9}, {1e9, 1e9, 0, 1e9}, {1e9, 1e9, math.NaN(), 1e9}, {1e9, 1e9, 1e9, math.NaN()}, {1e9, -1, 1e9, 1e9}} {
		if got, err := compareFamilyRatios(bad[0], bad[1], bad[2], bad[3]); err == nil {
			t.Errorf("compareFamilyRatios%v = %+v, want an error", bad, got)
		}
	}
}
