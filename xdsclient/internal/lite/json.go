package lite

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The types a TypedStruct wraps arrive as JSON (a google.protobuf.Struct).
// The generated UnmarshalJSONStruct methods read them with the functions
// here, following protojson's mapping: names in lowerCamelCase or as
// declared, 64-bit integers as numbers or strings, enums by name or
// number, bytes in base64, null for "not set", unknown names refused.
// A field of a type lite keeps as a Raw is recorded as set and not read
// further: decoders only ask whether it is.

// JSONSeen tracks the fields and oneofs a JSON object set, to refuse a
// field given twice (by both its names) or two members of one oneof.
type JSONSeen struct {
	fields []int32
	oneofs []string
}

// Field records field number num of message; oneof names its oneof, if any.
func (s *JSONSeen) Field(message, field string, num int32, oneof string) error {
	if slices.Contains(s.fields, num) {
		return fmt.Errorf("%s: duplicate field %s", message, field)
	}
	s.fields = append(s.fields, num)
	if oneof != "" {
		if slices.Contains(s.oneofs, oneof) {
			return fmt.Errorf("%s: oneof %s is already set (at %s)", message, oneof, field)
		}
		s.oneofs = append(s.oneofs, oneof)
	}
	return nil
}

// SortedKeys returns s's keys in order, so that errors do not depend on
// map iteration.
func SortedKeys(s *structpb.Struct) []string {
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// IsNull reports whether v is JSON null (or missing).
func IsNull(v *structpb.Value) bool {
	if v == nil {
		return true
	}
	_, ok := v.GetKind().(*structpb.Value_NullValue)
	return ok || v.GetKind() == nil
}

// UnknownJSONField refuses a name message does not have.
func UnknownJSONField(message, key string) error {
	return fmt.Errorf("%s: unknown field %q", message, key)
}

func wrongJSON(field, want string, v *structpb.Value) error {
	return fmt.Errorf("%s: want %s, got %s", field, want, jsonKind(v))
}

func jsonKind(v *structpb.Value) string {
	switch v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return "a string"
	case *structpb.Value_NumberValue:
		return "a number"
	case *structpb.Value_BoolValue:
		return "a boolean"
	case *structpb.Value_StructValue:
		return "an object"
	case *structpb.Value_ListValue:
		return "a list"
	}
	return "null"
}

// JSONObject returns v's object.
func JSONObject(v *structpb.Value, field string) (*structpb.Struct, error) {
	if o, ok := v.GetKind().(*structpb.Value_StructValue); ok {
		return o.StructValue, nil
	}
	return nil, wrongJSON(field, "an object", v)
}

// JSONList returns v's list.
func JSONList(v *structpb.Value, field string) (*structpb.ListValue, error) {
	if l, ok := v.GetKind().(*structpb.Value_ListValue); ok {
		return l.ListValue, nil
	}
	return nil, wrongJSON(field, "a list", v)
}

// JSONString reads a string field.
func JSONString(v *structpb.Value, field string) (string, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return s.StringValue, nil
	}
	return "", wrongJSON(field, "a string", v)
}

// JSONBool reads a bool field.
func JSONBool(v *structpb.Value, field string) (bool, error) {
	if b, ok := v.GetKind().(*structpb.Value_BoolValue); ok {
		return b.BoolValue, nil
	}
	return false, wrongJSON(field, "a boolean", v)
}

// JSONBytes reads a bytes field: base64, standard or URL-safe, padded or not.
func JSONBytes(v *structpb.Value, field string) ([]byte, error) {
	s, err := JSONString(v, field)
	if err != nil {
		return nil, err
	}
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid base64: %w", field, err)
	}
	return b, nil
}

// jsonNumber reads a number given as a JSON number or a string.
func jsonNumber(v *structpb.Value, field string) (float64, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return k.NumberValue, nil
	case *structpb.Value_StringValue:
		s := strings.TrimSpace(k.StringValue)
		if s != k.StringValue {
			return 0, fmt.Errorf("%s: invalid number %q", field, k.StringValue)
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: invalid number %q", field, k.StringValue)
		}
		return f, nil
	}
	return 0, wrongJSON(field, "a number", v)
}

func jsonInteger(v *structpb.Value, field string, lo, hi float64) (float64, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		// Exact for integers a float64 cannot hold.
		if i, err := strconv.ParseInt(s.StringValue, 10, 64); err == nil && float64(i) >= lo && float64(i) <= hi {
			return float64(i), nil
		}
	}
	f, err := jsonNumber(v, field)
	if err != nil {
		return 0, err
	}
	if f != math.Trunc(f) || f < lo || f > hi {
		return 0, fmt.Errorf("%s: %v is not an integer in range", field, f)
	}
	return f, nil
}

// JSONInt32 reads an int32 field.
func JSONInt32(v *structpb.Value, field string) (int32, error) {
	f, err := jsonInteger(v, field, math.MinInt32, math.MaxInt32)
	return int32(f), err
}

// JSONUint32 reads a uint32 field.
func JSONUint32(v *structpb.Value, field string) (uint32, error) {
	f, err := jsonInteger(v, field, 0, math.MaxUint32)
	return uint32(f), err
}

// JSONInt64 reads an int64 field.
func JSONInt64(v *structpb.Value, field string) (int64, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		if i, err := strconv.ParseInt(s.StringValue, 10, 64); err == nil {
			return i, nil
		}
	}
	f, err := jsonInteger(v, field, math.MinInt64, math.MaxInt64)
	if f >= math.MaxInt64 {
		return 0, fmt.Errorf("%s: %v is out of range", field, f)
	}
	return int64(f), err
}

// JSONUint64 reads a uint64 field.
func JSONUint64(v *structpb.Value, field string) (uint64, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		if u, err := strconv.ParseUint(s.StringValue, 10, 64); err == nil {
			return u, nil
		}
	}
	f, err := jsonInteger(v, field, 0, math.MaxUint64)
	if f >= math.MaxUint64 {
		return 0, fmt.Errorf("%s: %v is out of range", field, f)
	}
	return uint64(f), err
}

// JSONFloat64 reads a double field: a number, a numeric string, "NaN",
// "Infinity" or "-Infinity".
func JSONFloat64(v *structpb.Value, field string) (float64, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		switch s.StringValue {
		case "NaN":
			return math.NaN(), nil
		case "Infinity":
			return math.Inf(1), nil
		case "-Infinity":
			return math.Inf(-1), nil
		}
	}
	return jsonNumber(v, field)
}

// JSONFloat32 reads a float field.
func JSONFloat32(v *structpb.Value, field string) (float32, error) {
	f, err := JSONFloat64(v, field)
	if err != nil {
		return 0, err
	}
	if !math.IsInf(f, 0) && !math.IsNaN(f) && math.Abs(f) > math.MaxFloat32 {
		return 0, fmt.Errorf("%s: %v is out of range", field, f)
	}
	return float32(f), nil
}

// JSONEnum reads an enum field by name or number.
func JSONEnum[E ~int32](v *structpb.Value, field string, fromName func(string) (E, bool)) (E, error) {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		if e, ok := fromName(s.StringValue); ok {
			return e, nil
		}
		return 0, fmt.Errorf("%s: unknown enum value %q", field, s.StringValue)
	}
	if _, ok := v.GetKind().(*structpb.Value_NumberValue); ok {
		n, err := JSONInt32(v, field)
		return E(n), err
	}
	return 0, wrongJSON(field, "an enum name or number", v)
}

// JSONRaw reads a message field of a type lite keeps as a Raw: it must be
// an object, and only its presence is kept.
func JSONRaw(v *structpb.Value, field string) (*Raw, error) {
	if _, err := JSONObject(v, field); err != nil {
		return nil, err
	}
	return &Raw{}, nil
}

// JSONAny refuses a google.protobuf.Any: its contents would need a type
// lite may not have.
func JSONAny(_ *structpb.Value, field string) (*anypb.Any, error) {
	return nil, fmt.Errorf("%s: a google.protobuf.Any inside a TypedStruct is not supported", field)
}

// JSONStatus refuses a google.rpc.Status, which carries Anys.
func JSONStatus(_ *structpb.Value, field string) (*statuspb.Status, error) {
	return nil, fmt.Errorf("%s: a google.rpc.Status inside a TypedStruct is not supported", field)
}

// JSONDuration reads a google.protobuf.Duration: "1.5s", "-3s", "0.000001s".
func JSONDuration(v *structpb.Value, field string) (*durationpb.Duration, error) {
	s, err := JSONString(v, field)
	if err != nil {
		return nil, err
	}
	bad := fmt.Errorf("%s: invalid duration %q", field, s)
	num, ok := strings.CutSuffix(s, "s")
	if !ok || num == "" {
		return nil, bad
	}
	neg := strings.HasPrefix(num, "-")
	num = strings.TrimPrefix(num, "-")
	whole, frac, _ := strings.Cut(num, ".")
	if whole == "" || len(frac) > 9 || strings.ContainsAny(whole+frac, "+-") {
		return nil, bad
	}
	secs, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || secs > 315576000000 {
		return nil, bad
	}
	var nanos int64
	if frac != "" {
		n, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil {
			return nil, bad
		}
		nanos = n
	}
	if neg {
		secs, nanos = -secs, -nanos
	}
	return &durationpb.Duration{Seconds: secs, Nanos: int32(nanos)}, nil
}

// JSONTimestamp reads a google.protobuf.Timestamp in RFC 3339.
func JSONTimestamp(v *structpb.Value, field string) (*timestamppb.Timestamp, error) {
	s, err := JSONString(v, field)
	if err != nil {
		return nil, err
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid timestamp %q", field, s)
	}
	return timestamppb.New(t), nil
}

// JSONStruct reads a google.protobuf.Struct.
func JSONStruct(v *structpb.Value, field string) (*structpb.Struct, error) {
	return JSONObject(v, field)
}

// JSONValue reads a google.protobuf.Value: any JSON value.
func JSONValue(v *structpb.Value, _ string) (*structpb.Value, error) {
	if v == nil {
		return structpb.NewNullValue(), nil
	}
	return v, nil
}

// JSONListValue reads a google.protobuf.ListValue.
func JSONListValue(v *structpb.Value, field string) (*structpb.ListValue, error) {
	return JSONList(v, field)
}

// JSONEmpty reads a google.protobuf.Empty: an empty object.
func JSONEmpty(v *structpb.Value, field string) (*emptypb.Empty, error) {
	o, err := JSONObject(v, field)
	if err != nil {
		return nil, err
	}
	if len(o.GetFields()) > 0 {
		return nil, errors.New(field + ": google.protobuf.Empty has no fields")
	}
	return &emptypb.Empty{}, nil
}

// The wrappers are their primitive values.

func JSONBoolValue(v *structpb.Value, field string) (*wrapperspb.BoolValue, error) {
	b, err := JSONBool(v, field)
	return wrapperspb.Bool(b), err
}

func JSONUInt32Value(v *structpb.Value, field string) (*wrapperspb.UInt32Value, error) {
	n, err := JSONUint32(v, field)
	return wrapperspb.UInt32(n), err
}

func JSONUInt64Value(v *structpb.Value, field string) (*wrapperspb.UInt64Value, error) {
	n, err := JSONUint64(v, field)
	return wrapperspb.UInt64(n), err
}

func JSONInt32Value(v *structpb.Value, field string) (*wrapperspb.Int32Value, error) {
	n, err := JSONInt32(v, field)
	return wrapperspb.Int32(n), err
}

func JSONInt64Value(v *structpb.Value, field string) (*wrapperspb.Int64Value, error) {
	n, err := JSONInt64(v, field)
	return wrapperspb.Int64(n), err
}

func JSONDoubleValue(v *structpb.Value, field string) (*wrapperspb.DoubleValue, error) {
	f, err := JSONFloat64(v, field)
	return wrapperspb.Double(f), err
}

func JSONFloatValue(v *structpb.Value, field string) (*wrapperspb.FloatValue, error) {
	f, err := JSONFloat32(v, field)
	return wrapperspb.Float(f), err
}

func JSONStringValue(v *structpb.Value, field string) (*wrapperspb.StringValue, error) {
	s, err := JSONString(v, field)
	return wrapperspb.String(s), err
}

func JSONBytesValue(v *structpb.Value, field string) (*wrapperspb.BytesValue, error) {
	b, err := JSONBytes(v, field)
	return wrapperspb.Bytes(b), err
}
