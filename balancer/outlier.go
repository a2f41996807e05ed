package balancer

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"mesh/xdsclient"
)

// outlierDetector is one cluster's outlier detection (gRFC A50) for one
// owner (a channel's LB policy or a RoundTripper channel). Requests count
// successes and failures per endpoint address with atomics; a timer every
// interval runs the success-rate and failure-percentage algorithms, ejects
// and returns endpoints, and calls onChange (without locks held) so the
// owner publishes a table without the ejected ones.
type outlierDetector struct {
	clock    timeSource
	timers   *sync.WaitGroup // the owner's; its Close waits for our timer
	onChange func()

	mu     sync.Mutex
	cfg    *xdsclient.OutlierDetection
	stats  map[string]*endpointStats
	timer  timeSourceTimer
	closed bool
}

// endpointStats is one endpoint address's call counters and ejection
// state. The counters and ejected are read and written without locks;
// the rest belongs to the detector's mutex.
type endpointStats struct {
	successes atomic.Int64
	failures  atomic.Int64
	// consecutive counts failures since the last success.
	consecutive atomic.Int64
	ejected     atomic.Bool

	ejectedAt  time.Time
	multiplier int64
	// lastSuccesses and lastFailures are the previous interval's counts.
	lastSuccesses, lastFailures int64
}

// record counts one finished request.
func (s *endpointStats) record(ok bool) {
	if s == nil {
		return
	}
	if ok {
		s.successes.Add(1)
		if s.consecutive.Load() != 0 {
			s.consecutive.Store(0)
		}
	} else {
		s.failures.Add(1)
		s.consecutive.Add(1)
	}
}

func newOutlierDetector(clock timeSource, timers *sync.WaitGroup, onChange func()) *outlierDetector {
	return &outlierDetector{clock: clock, timers: timers, onChange: onChange, stats: map[string]*endpointStats{}}
}

// sync sets the config and the endpoint addresses, keeping the stats (and
// ejections) of addresses that stay, and returns the stats by address.
// The interval timer starts with the first config.
func (d *outlierDetector) sync(cfg *xdsclient.OutlierDetection, addrs []string) map[string]*endpointStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg = cfg
	keep := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		keep[a] = true
		if d.stats[a] == nil {
			d.stats[a] = &endpointStats{}
		}
	}
	for a := range d.stats {
		if !keep[a] {
			delete(d.stats, a)
		}
	}
	if d.timer == nil && !d.closed {
		d.armLocked()
	}
	out := make(map[string]*endpointStats, len(d.stats))
	for a, s := range d.stats {
		out[a] = s
	}
	return out
}

func (d *outlierDetector) armLocked() {
	d.timers.Add(1)
	d.timer = d.clock.AfterFunc(d.cfg.Interval, func() {
		defer d.timers.Done()
		d.tick()
	})
}

// stop ends the timer; the owner's Close waits for a tick in progress.
func (d *outlierDetector) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.timer != nil && d.timer.Stop() {
		d.timers.Done()
	}
	d.timer = nil
}

// tick runs the A50 algorithms once and re-arms the timer.
func (d *outlierDetector) tick() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	changed := d.evaluateLocked(d.clock.Now())
	d.armLocked()
	d.mu.Unlock()
	if changed {
		d.onChange()
	}
}

// evaluateLocked swaps the counters and ejects and returns endpoints; it
// reports whether any ejection state changed.
func (d *outlierDetector) evaluateLocked(now time.Time) bool {
	cfg := d.cfg
	for _, s := range d.stats {
		s.lastSuccesses = s.successes.Swap(0)
		s.lastFailures = s.failures.Swap(0)
	}
	changed := false
	if n := cfg.Consecutive5xx; n > 0 {
		for _, s := range d.stats {
			if !s.ejected.Load() && s.consecutive.Load() >= int64(n) && d.mayEjectLocked() && enforced(cfg.Consecutive5xxEnforcement) {
				s.consecutive.Store(0)
				d.ejectLocked(s, now)
				changed = true
			}
		}
	}
	if sr := cfg.SuccessRate; sr != nil {
		candidates := d.candidates(sr.RequestVolume)
		if len(candidates) > 0 && len(candidates) >= int(sr.MinimumHosts) {
			var sum, sumSquares float64
			for _, s := range candidates {
				rate := successRate(s)
				sum += rate
				sumSquares += rate * rate
			}
			n := float64(len(candidates))
			mean := sum / n
			stdev := math.Sqrt(max(0, sumSquares/n-mean*mean))
			threshold := mean - stdev*float64(sr.StdevFactor)/1000
			for _, s := range candidates {
				if successRate(s) < threshold && d.mayEjectLocked() && enforced(sr.EnforcementPercentage) {
					d.ejectLocked(s, now)
					changed = true
				}
			}
		}
	}
	if fp := cfg.FailurePercentage; fp != nil {
		candidates := d.candidates(fp.RequestVolume)
		if len(candidates) > 0 && len(candidates) >= int(fp.MinimumHosts) {
			for _, s := range candidates {
				if s.ejected.Load() {
					continue
				}
				failurePercent := 100 * float64(s.lastFailures) / float64(s.lastSuccesses+s.lastFailures)
				if failurePercent > float64(fp.Threshold) && d.mayEjectLocked() && enforced(fp.EnforcementPercentage) {
					d.ejectLocked(s, now)
					changed = true
				}
			}
		}
	}
	maxEjection := max(cfg.BaseEjectionTime, cfg.MaxEjectionTime)
	for _, s := range d.stats {
		if !s.ejected.Load() {
			if s.multiplier > 0 {
				s.multiplier--
			}
			continue
		}
		ejection := cfg.BaseEjectionTime * time.Duration(s.multiplier)
		if ejection > maxEjection || ejection < 0 {
			ejection = maxEjection
		}
		if !now.Before(s.ejectedAt.Add(ejection)) {
			s.ejected.Store(false)
			changed = true
		}
	}
	return changed
}

// candidates are the endpoints with at least volume requests last interval.
func (d *outlierDetector) candidates(volume uint32) []*endpointStats {
	var out []*endpointStats
	for _, s := range d.stats {
		if !s.ejected.Load() && s.lastSuccesses+s.lastFailures >= int64(max(volume, 1)) {
			out = append(out, s)
		}
	}
	return out
}

func successRate(s *endpointStats) float64 {
	return float64(s.lastSuccesses) / float64(s.lastSuccesses+s.lastFailures)
}

// mayEjectLocked reports whether another endpoint may be ejected: not once
// the ejected share has reached max_ejection_percent (gRFC A50).
func (d *outlierDetector) mayEjectLocked() bool {
	ejected := 0
	for _, s := range d.stats {
		if s.ejected.Load() {
			ejected++
		}
	}
	return uint64(ejected)*100 < uint64(d.cfg.MaxEjectionPercent)*uint64(len(d.stats))
}

func (d *outlierDetector) ejectLocked(s *endpointStats, now time.Time) {
	s.ejected.Store(true)
	s.ejectedAt = now
	s.multiplier++
}

func enforced(percent uint32) bool {
	return percent >= 100 || rand.Uint32N(100) < percent
}
