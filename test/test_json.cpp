// test/test_json.cpp — the strict JSON reader: valid documents, each kind of broken input (with the line
// and column it names), and a round trip of random strings through json_quote.
#include "test.h"

#include <cmath>

#include "data.h"

TEST_CASE("json: parses every value type") {
    Json v = parse_json(R"({"a": [1, -2, 3.5, 1e3, -0.25E-2, 0], "b": {"c": null, "d": true, "e": false},
                            "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00x", "u": "ü中"})",
                        "doc.json");
    REQUIRE(v.type == Json::Object);
    const Json* a = v.find("a");
    REQUIRE(a);
    REQUIRE(a->array.size() == 6);
    CHECK(a->array[0].is_int());
    CHECK(a->array[0].integer == 1);
    CHECK(a->array[1].integer == -2);
    CHECK_FALSE(a->array[2].is_int());
    CHECK(a->array[2].number == 3.5);
    CHECK(a->array[3].number == 1000.0);
    CHECK(a->array[4].number == doctest::Approx(-0.0025));
    CHECK(v.find("b")->find("c")->type == Json::Null);
    CHECK(v.find("b")->find("d")->boolean);
    CHECK_FALSE(v.find("b")->find("e")->boolean);
    CHECK(v.find("s")->string == "q\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80x");
    CHECK(v.find("u")->string == "ü中");
    CHECK(v.find("missing") == nullptr);
    CHECK(parse_json("  [ ]  ", "x").array.empty());
    CHECK(parse_json("{}", "x").object.empty());
    CHECK(parse_json("9007199254740993", "x").integer == 9007199254740993LL);  // exact beyond double
}

TEST_CASE("json: Python's Infinity, -Infinity and NaN read as numbers (accelerate's steps_per_print)") {
    Json v = parse_json(R"({"steps_per_print": Infinity, "low": -Infinity, "x": [NaN, 1]})", "ds.json");
    CHECK(v.find("steps_per_print")->type == Json::Number);
    CHECK(std::isinf(v.find("steps_per_print")->number));
    CHECK(v.find("steps_per_print")->number > 0);
    CHECK(v.find("low")->number < 0);
    CHECK(std::isinf(v.find("low")->number));
    CHECK(std::isnan(v.find("x")->array[0].number));
    CHECK_FALSE(v.find("steps_per_print")->is_int());
    CHECK_THROWS_WITH_AS(parse_json("[Inf]", "f.json"), doctest::Contains("f.json:1:2: expected a value"), Error);
    CHECK_THROWS_WITH_AS(parse_json("[infinity]", "f.json"), doctest::Contains("f.json:1:2: expected a value"), Error);
}

TEST_CASE("json: broken input names file, line and column") {
    struct Case { const char* text; const char* message; };
    const Case cases[] = {
        {"", "f.json:1:1: expected a value but the text ended"},
        {"{\"a\": 1,}", "f.json:1:9: expected a string key"},
        {"[1, 2,]", "f.json:1:7: expected a value"},
        {"{\"a\" 1}", "f.json:1:6: expected ':'"},
        {"{\n  \"a\": \"open", "f.json:2:8: unterminated string"},
        {"\"bad \\q escape\"", "f.json:1:6: unknown escape"},
        {"[01]", "f.json:1:2: leading zero"},
        {"[1.]", "f.json:1:4: expected a digit"},
        {"\"tab\tinside\"", "f.json:1:5: control character"},
        {"\"\\ud800\"", "f.json:1:2: high surrogate without its low half"},
        {"\"\\udc00\"", "f.json:1:2: lone low surrogate"},
        {"// comment\n{}", "f.json:1:1: expected a value"},
        {"{} {}", "f.json:1:4: unexpected text after the JSON value"},
        {"[1 2]", "f.json:1:4: expected ',' or ']'"},
        {"{\"a\":1 \"b\":2}", "f.json:1:8: expected ',' or '}'"},
        {"tru", "f.json:1:1: expected a value"},
        {"\"\xff\"", "f.json:1:1: string is not valid UTF-8"},
        {"\n\n   nul", "f.json:3:4: expected a value"},
        {"{\"a\": 1, \"a\": 2}", "f.json:1:10: the key \"a\" appears twice"},
        {"{\"z\": {\"stage\": 1},\n \"z\": {\"stage\": 3}}", "f.json:2:2: the key \"z\" appears twice"},
        {"{\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k3\":9}", "f.json:1:65: the key \"k3\" appears twice"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        try {
            parse_json(c.text, "f.json");
            FAIL("parsed without error");
        } catch (const Error& e) {
            CHECK(std::string(e.what()).rfind(c.message, 0) == 0);
            CAPTURE(e.what());
        }
    }
    CHECK_THROWS_WITH_AS(parse_json(std::string(600, '[') + std::string(600, ']'), "deep.json"),
                         doctest::Contains("nesting deeper than 512"), Error);
    CHECK_THROWS_WITH_AS(parse_json("{", "rows.jsonl", 7), doctest::Contains("rows.jsonl:7:2:"), Error);
}

TEST_CASE("json: random strings survive json_quote and parse") {
    for (uint64_t seed = 1; seed <= 50; ++seed) {
        std::string s = random_text(seed * 7919 + uint64_t(time(nullptr)), 1 + seed * 3);
        s += char(1 + seed % 31);  // a control character, which must be escaped
        Json v = parse_json(json_quote(s), "q");
        REQUIRE(v.is_string());
        CHECK(v.string == s);
    }
}

TEST_CASE("json: files") {
    std::string path = temp_file("config.json", "{\"hidden_size\": 2048,\n \"x\": [true,]}");
    CHECK_THROWS_WITH_AS(read_json_file(path), doctest::Contains("config.json:2:13:"), Error);
    CHECK_THROWS_WITH_AS(read_json_file("/nonexistent/config.json"),
                         doctest::Contains("cannot read /nonexistent/config.json"), Error);
}

TEST_CASE("utf8: ill-formed bytes become U+FFFD by maximal subparts") {
    const char* r = "\xEF\xBF\xBD";
    CHECK(utf8_sanitize("plain ascii") == "plain ascii");
    CHECK(utf8_sanitize("ok ü 中 😀") == "ok ü 中 😀");
    CHECK(utf8_sanitize("a\xFF" "b") == std::string("a") + r + "b");
    CHECK(utf8_sanitize("\xE2\x82") == std::string(r));                  // truncated 3-byte: one subpart
    CHECK(utf8_sanitize("\xF0\x9F\x98x") == std::string(r) + "x");        // truncated 4-byte
    CHECK(utf8_sanitize("\xED\xA0\x80") == std::string(r) + r + r);       // surrogate: each byte
    CHECK(utf8_sanitize("\xC0\xAF") == std::string(r) + r);               // overlong
    CHECK(utf8_sanitize("\x80\x80") == std::string(r) + r);               // stray continuations
    for (uint64_t seed = 0; seed < 20; ++seed) {
        std::string s = random_text(seed + 99, 200);
        CHECK(utf8_sanitize(s) == s);
    }
}
